"""export.py: t-SNE computed beside other work equals t-SNE computed in line."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
from omegaconf import OmegaConf

from cl_runner import export


def test_t_sne_beside_other_work_equals_t_sne_in_line():
    x = np.random.default_rng(0).normal(size=(120, 8)).astype(np.float32)
    settings = OmegaConf.create({"tsne_points": 100, "tsne_perplexity": 10})
    in_line = export.tsne_later(None, settings, 3, x)()
    with ThreadPoolExecutor(1) as beside:
        collect = export.tsne_later(beside, settings, 3, x)
        beside_result = collect()
    assert in_line.shape == (100, 2)
    np.testing.assert_allclose(beside_result, in_line, rtol=1e-5, atol=1e-5)
    assert export.tsne_later(None, settings, 3, np.ones((120, 8), np.float32))() is None  # collapsed: skipped
