"""Evaluate an encoder: its embeddings (embeddings.py), the protocols named in `eval.protocols`, one class each
behind the contract of protocol.py (on frozen embeddings: frozen.py and probes.py; trained on labels:
classifier_training.py), the labels they may use (label_fraction.py), the label-free diagnostics
(diagnostics.py), and the evaluation phase of a run that puts them together (scores.py)."""
from cl_runner.evaluation.diagnostics import alignment, diagnostics, is_collapsed, uniformity
from cl_runner.evaluation.embeddings import embed
from cl_runner.evaluation.protocol import Progress
from cl_runner.evaluation.scores import (PROTOCOLS, SCORED, add_baseline, embed_for_evaluation, evaluate_trained,
                                         final_scores, gains, scores_only, summary_line)

__all__ = ["PROTOCOLS", "SCORED", "Progress", "add_baseline", "alignment", "diagnostics", "embed",
           "embed_for_evaluation", "evaluate_trained", "final_scores", "gains", "is_collapsed", "scores_only",
           "summary_line", "uniformity"]
