import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, top_k_accuracy_score

from cl_runner import evaluate
from cl_runner.models import Encoder, PamiCNN


def blobs(n_per_class: int = 60, classes: int = 4, dim: int = 8, spread: float = 0.3, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim)) * 3
    y = np.repeat(np.arange(classes), n_per_class)
    x = centres[y] + rng.normal(scale=spread, size=(len(y), dim))
    return x.astype(np.float32), y


def test_linear_probe_separates_blobs_and_reports_a_consistent_confusion_matrix():
    x, y = blobs()
    result = evaluate.linear_probe(x[::2], y[::2], x[1::2], y[1::2], num_classes=4)
    assert result["linear_top1"] == 1.0 and result["linear_top3"] == 1.0
    matrix = np.array(result["confusion_matrix"])
    assert matrix.shape == (4, 4) and (np.diag(matrix) == 30).all() and matrix.sum() == 120


def test_linear_probe_on_noise_is_near_chance_and_top3_counts_hits_in_the_three_best():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(2000, 8)).astype(np.float32), rng.integers(0, 10, 2000)
    result = evaluate.linear_probe(x[:1000], y[:1000], x[1000:], y[1000:], num_classes=10)
    assert result["linear_top1"] < 0.2 and 0.2 < result["linear_top3"] < 0.45


def test_top_k_definition_on_a_hand_case():
    # the metric we report is scikit-learn's; check it reads as we document it
    scores = np.array([[0.5, 0.3, 0.2, 0.0], [0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1]])
    labels = np.array([0, 0, 2])  # hit at rank 1, rank 4, rank 3
    assert top_k_accuracy_score(labels, scores, k=1, labels=range(4)) == pytest.approx(1 / 3)
    assert top_k_accuracy_score(labels, scores, k=3, labels=range(4)) == pytest.approx(2 / 3)


def test_knn_majority_vote_on_a_hand_case():
    train_x = np.array([[0.0], [0.1], [0.2], [5.0], [5.1]], dtype=np.float32)
    train_y = np.array([0, 0, 0, 1, 1])
    test_x = np.array([[0.05], [4.9], [2.0]], dtype=np.float32)
    # k=3: [0.05] -> 0,0,0; [4.9] -> 1,1,0 (0.2) -> 1; [2.0] -> 0.2, 0.1, 0.0 -> 0
    assert evaluate.knn_accuracy(train_x, train_y, test_x, np.array([0, 1, 0]), k=3) == 1.0
    assert evaluate.knn_accuracy(train_x, train_y, test_x, np.array([0, 1, 1]), k=3) == pytest.approx(2 / 3)


def weighted_knn_reference(train_x, train_y, test_x, k, temperature, num_classes):
    """Brute force, one query at a time, straight from the definition."""
    predictions = []
    bank = train_x / np.linalg.norm(train_x, axis=1, keepdims=True)
    for q in test_x:
        sim = bank @ (q / np.linalg.norm(q))
        top = np.argsort(-sim, kind="stable")[:k]
        votes = np.zeros(num_classes)
        for i in top:
            votes[train_y[i]] += np.exp(sim[i] / temperature)
        predictions.append(votes.argmax())
    return np.array(predictions)


def test_weighted_cosine_knn_equals_the_brute_force_definition():
    x, y = blobs(n_per_class=40, classes=5, spread=2.5, seed=3)
    train_x, train_y, test_x, test_y = x[::2], y[::2], x[1::2], y[1::2]
    expected = accuracy_score(test_y, weighted_knn_reference(train_x, train_y, test_x, 20, 0.1, 5))
    ours = evaluate.weighted_cosine_knn_accuracy(train_x, train_y, test_x, test_y, 5, k=20, temperature=0.1, chunk=7)
    assert ours == pytest.approx(expected)
    assert 0.3 < ours < 1.0  # the case is neither trivial nor hopeless


def test_weighted_votes_can_overrule_the_majority():
    train_x = np.array([[1.0, 0.0], [0.0, 1.0], [0.05, 1.0]], dtype=np.float32)
    train_y = np.array([0, 1, 1])
    query = np.array([[1.0, 0.05]], dtype=np.float32)  # nearly identical to the one class-0 point
    assert evaluate.weighted_cosine_knn_accuracy(train_x, train_y, query, np.array([0]), 2, k=3,
                                                 temperature=0.07) == 1.0


def test_diagnostics_detect_collapse():
    rng = np.random.default_rng(0)
    spread = rng.normal(size=(500, 16))
    collapsed = np.ones((500, 16)) + 1e-6 * rng.normal(size=(500, 16))
    good, bad = evaluate.diagnostics(spread), evaluate.diagnostics(collapsed)
    assert good["rankme"] > 14 and bad["rankme"] < 2
    assert good["normalized_std"] == pytest.approx(1 / 16 ** 0.5, rel=0.1) and bad["normalized_std"] < 1e-3


def test_paper_protocol_scores_a_stratified_fifth_and_standard_the_whole_test_set():
    x, y = blobs(n_per_class=50, classes=4)
    paper = evaluate.paper_protocol(x, y, 4, seed=0)
    assert paper["scored_images"] == 40 and np.array(paper["confusion_matrix"]).sum(axis=1).tolist() == [10] * 4
    standard = evaluate.standard_protocol(x[::2], y[::2], x[1::2], y[1::2], 4, cosine_knn_k=10)
    assert standard["scored_images"] == 100
    assert {"linear_top1", "linear_top3", "knn_top1", "cosine_knn_top1"} <= standard.keys()


def test_embed_uses_eval_mode_and_leaves_the_encoder_unchanged():
    encoder = Encoder(PamiCNN(1), projector=[16, 8])
    encoder.train()
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    images = torch.randint(0, 256, (10, 1, 28, 28), dtype=torch.uint8)
    first = evaluate.embed(encoder, images, batch_size=3)
    assert first.shape == (10, 32) and encoder.training
    assert all(torch.equal(before[k], v) for k, v in encoder.state_dict().items())  # BN stats untouched
    np.testing.assert_allclose(first[:3], evaluate.embed(encoder, images[:3]), atol=1e-6)  # batch-independent
    assert evaluate.embed(encoder, images, features="projector").shape == (10, 8)


def test_alignment_and_uniformity_on_hand_cases():
    x = np.array([[1.0, 0.0], [0.0, 2.0]], dtype=np.float32)
    assert evaluate.alignment(x, x) == 0.0
    assert evaluate.alignment(x, -x) == pytest.approx(4.0)  # antipodal unit vectors: distance 2, squared 4
    # two points at distance sqrt(2) on the circle: log exp(-2 * 2) = -4
    assert evaluate.uniformity(x) == pytest.approx(-4.0)
    collapsed = np.ones((10, 3), dtype=np.float32)
    assert evaluate.uniformity(collapsed) == pytest.approx(0.0)
    spread = np.random.default_rng(0).normal(size=(500, 16))
    assert evaluate.diagnostics(spread)["uniformity"] < -3.5  # far from collapsed
