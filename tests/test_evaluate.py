"""The evaluation package's diagnostics, embeddings and frozen protocols on hand cases."""
import numpy as np
import pytest
import torch

from cl_runner import evaluation
from cl_runner.evaluation import frozen
from cl_runner.evaluation.probes import Probes
from cl_runner.models import Encoder, PamiCNN
from test_probes import blobs


def test_diagnostics_detect_collapse():
    rng = np.random.default_rng(0)
    spread = rng.normal(size=(500, 16))
    collapsed = np.ones((500, 16)) + 1e-6 * rng.normal(size=(500, 16))
    good, bad = evaluation.diagnostics(spread), evaluation.diagnostics(collapsed)
    assert good["rankme"] > 14 and bad["rankme"] < 2
    assert good["normalized_std"] == pytest.approx(1 / 16 ** 0.5, rel=0.1) and bad["normalized_std"] < 1e-3


def test_paper_protocol_scores_a_stratified_fifth_and_standard_the_whole_test_set():
    x, y = blobs(n_per_class=50, classes=4)
    paper = frozen.paper_protocol(x, y, 4, seed=0)
    assert paper["scored_images"] == 40 and np.array(paper["confusion_matrix"]).sum(axis=1).tolist() == [10] * 4
    standard = frozen.standard_protocol(x[::2], y[::2], x[1::2], y[1::2], 4, Probes(cosine_knn_k=10))
    assert standard["scored_images"] == 100
    assert {"linear_top1", "linear_top3", "knn_top1", "cosine_knn_top1"} <= standard.keys()


def test_embed_uses_eval_mode_and_leaves_the_encoder_unchanged():
    encoder = Encoder(PamiCNN(1), projector=[16, 8])
    encoder.train()
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    images = torch.randint(0, 256, (10, 1, 28, 28), dtype=torch.uint8)
    first = evaluation.embed(encoder, images, batch_size=3)
    assert first.shape == (10, 32) and encoder.training
    assert all(torch.equal(before[k], v) for k, v in encoder.state_dict().items())  # BN stats untouched
    np.testing.assert_allclose(first[:3], evaluation.embed(encoder, images[:3]), atol=1e-6)  # batch-independent
    assert evaluation.embed(encoder, images, features="projector").shape == (10, 8)


def test_alignment_and_uniformity_on_hand_cases():
    x = np.array([[1.0, 0.0], [0.0, 2.0]], dtype=np.float32)
    assert evaluation.alignment(x, x) == 0.0
    assert evaluation.alignment(x, -x) == pytest.approx(4.0)  # antipodal unit vectors: distance 2, squared 4
    # two points at distance sqrt(2) on the circle: log exp(-2 * 2) = -4
    assert evaluation.uniformity(x) == pytest.approx(-4.0)
    collapsed = np.ones((10, 3), dtype=np.float32)
    assert evaluation.uniformity(collapsed) == pytest.approx(0.0)
    spread = np.random.default_rng(0).normal(size=(500, 16))
    assert evaluation.diagnostics(spread)["uniformity"] < -3.5  # far from collapsed


@pytest.mark.parametrize("n, chunk", [(7, 3), (300, 64), (300, 1024)])
def test_chunked_uniformity_equals_the_mean_over_all_pairs(n, chunk):
    x = np.random.default_rng(n).normal(size=(n, 5))
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    pairs = [np.exp(-2.0 * np.sum((u[i] - u[j]) ** 2)) for i in range(n) for j in range(i + 1, n)]
    assert evaluation.uniformity(x, chunk=chunk) == pytest.approx(np.log(np.mean(pairs)), rel=1e-10)
