"""SwAV (Caron et al. 2020, "Unsupervised Learning of Visual Features by Contrasting Cluster Assignments"): online
clustering in place of pairwise comparisons. The l2-normalized embeddings are scored against K learnable prototypes;
Sinkhorn-Knopp turns a view's scores into codes, soft assignments that split the batch evenly over the prototypes
(section 3.1, "Online clustering"); and each view predicts the codes of the others: the swapped prediction of
eqs. 1-2."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cl_runner import distributed
from cl_runner.config import is_int
from cl_runner.errors import ConfigError
from cl_runner.losses.base import Loss, embed_views

CODE_VIEWS = 2  # the views whose codes are predicted: the first two (the paper's two full-resolution crops)


@torch.no_grad()
def sinkhorn(scores: torch.Tensor, epsilon: float, iterations: int) -> torch.Tensor:
    """The codes of a batch, scores [B, K] -> [B, K] with rows that sum to 1 (the sinkhorn of the paper's
    Algorithm 1): Q = exp(scores / epsilon)^T (K x B), rescaled `iterations` times so that each prototype's row
    sums to 1/K and then each sample's column to 1/B (an equipartition of the batch), returned as B Q^T. The
    largest score is subtracted first, and the pseudocode's division of Q by its total left out: the rescaling
    undoes both, and exp cannot overflow."""
    q = torch.exp((scores - scores.max()) / epsilon).T
    prototypes, samples = q.shape
    for _ in range(iterations):
        q = q / (prototypes * q.sum(dim=1, keepdim=True))
        q = q / (samples * q.sum(dim=0, keepdim=True))
    return samples * q.T


class SwAVLoss(Loss):
    """SwAV's swapped prediction (Caron et al. 2020, eqs. 1-2; multi-crop's sum over views, section 3.2): the
    embeddings z (l2-normalized) are scored against the prototypes c_k, the l2-normalized rows of a linear layer
    without bias, s = z C^T; the codes q_i of the first two views are `sinkhorn` of their scores (no gradient); and
    the loss is the mean over the pairs (i, v), i in {1, 2}, v != i, of l(z_v, q_i) = -sum_k q_i^(k) log p_v^(k),
    p_v = softmax(s_v / T), averaged over the batch. Further views, and multi-crop's local views, only predict. `in_batch`:
    the codes split the global batch, so every process computes them from the whole global batch's embeddings.

    After `queue_start_epochs` epochs, the code views' embeddings also go into a queue per view of the last
    `queue_size` (the global batch's, newest first), whose scores join that view's batch in Sinkhorn, their codes
    dropped: enough samples for small batches to split (section 3.1, "Working with small batches"). During the
    first `freeze_prototypes_epochs` epochs the prototypes get a zero gradient (the paper's implementation cancels
    theirs), which leaves them where they are under SGD and LARS (their weight decay rescales a row, which the
    normalization after every step undoes). `epochs`: the run's, to tell those epochs from the progress that
    `after_step` reports."""

    pairings = ("multiview",)
    in_batch = True
    local_views = True

    def __init__(self, epochs: int, temperature: float = 0.1, epsilon: float = 0.05, sinkhorn_iterations: int = 3,
                 num_prototypes: int = 3000, queue_size: int = 3840, queue_start_epochs: float = 15,
                 freeze_prototypes_epochs: float = 1):
        super().__init__()
        for key, value, ok, rule in [
                ("epochs", epochs, is_int(epochs) and epochs >= 0, "an integer >= 0"),
                ("temperature", temperature, temperature > 0, "> 0"),
                ("epsilon", epsilon, epsilon > 0, "> 0"),
                ("sinkhorn_iterations", sinkhorn_iterations, is_int(sinkhorn_iterations) and sinkhorn_iterations >= 1,
                 "an integer >= 1"),
                ("num_prototypes", num_prototypes, is_int(num_prototypes) and num_prototypes >= 2, "an integer >= 2"),
                ("queue_size", queue_size, is_int(queue_size) and queue_size >= 0, "an integer >= 0 (0: no queue)"),
                ("queue_start_epochs", queue_start_epochs, queue_start_epochs >= 0, ">= 0"),
                ("freeze_prototypes_epochs", freeze_prototypes_epochs, freeze_prototypes_epochs >= 0, ">= 0")]:
            if not ok:
                raise ConfigError(f"loss.{key} must be {rule}, got {value!r}")
        self.epochs, self.temperature, self.epsilon = epochs, temperature, epsilon
        self.sinkhorn_iterations, self.num_prototypes, self.queue_size = sinkhorn_iterations, num_prototypes, queue_size
        self.queue_start_epochs, self.freeze_prototypes_epochs = queue_start_epochs, freeze_prototypes_epochs
        self.progress, self.queued = 0.0, 0  # the share of training done, the queue's filled rows: host values

    def setup(self, encoder, batch_size):
        self.prototypes = nn.Linear(encoder.output_dim, self.num_prototypes, bias=False)
        self.normalize_prototypes()
        self.register_buffer("queue", torch.zeros(CODE_VIEWS, self.queue_size, encoder.output_dim))

    def training_loss(self, encoder, batch, share, encode):
        z = distributed.gather(embed_views(encoder, batch, encode), dim=1, sizes=share.sizes)  # the global batch
        loss = self(z)
        if self.queue_size and self.reached(self.queue_start_epochs):
            self.enqueue(F.normalize(z[:CODE_VIEWS].detach(), dim=-1))
        return loss

    def forward(self, z: torch.Tensor, target: torch.Tensor | None = None, labels: torch.Tensor | None = None
                ) -> torch.Tensor:
        """z: [views, tuples, dim], views >= 2; the queue is the one before this step's embeddings."""
        weight = self.prototypes.weight
        if not self.reached(self.freeze_prototypes_epochs):  # a zero gradient, not none: DDP waits for one
            weight = weight.detach() + 0 * weight
        scores = F.normalize(z, dim=-1) @ weight.T  # views x tuples x prototypes
        codes = self.codes(scores[:CODE_VIEWS].detach())
        log_p = F.log_softmax(scores / self.temperature, dim=-1)
        return torch.stack([-(codes[i] * log_p[v]).sum(dim=-1).mean()
                            for i in range(CODE_VIEWS) for v in range(len(z)) if v != i]).mean()

    @torch.no_grad()
    def codes(self, scores: torch.Tensor) -> torch.Tensor:
        """scores [2, tuples, prototypes] of the code views -> their codes, each view's batch split with its queue."""
        queued = self.queue[:, :self.queued] @ self.prototypes.weight.T
        return torch.stack([sinkhorn(torch.cat([own, old]), self.epsilon, self.sinkhorn_iterations)[:len(own)]
                            for own, old in zip(scores, queued)])

    @torch.no_grad()
    def enqueue(self, z: torch.Tensor) -> None:
        """z: [2, tuples, dim], the code views' l2-normalized embeddings; the oldest fall out."""
        self.queue.copy_(torch.cat([z, self.queue], dim=1)[:, :self.queue_size])
        self.queued = min(self.queued + z.shape[1], self.queue_size)

    def reached(self, epochs: float) -> bool:
        """Whether the steps before this one cover `epochs` of the run's epochs (a run of none takes no step)."""
        return self.progress >= epochs / max(self.epochs, 1)

    @torch.no_grad()
    def normalize_prototypes(self) -> None:
        self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))

    def after_step(self, encoder, progress):
        self.progress = progress
        self.normalize_prototypes()

    def get_extra_state(self) -> torch.Tensor:
        """The progress and the queue's fill, checkpointed as a host tensor: kept on the host, they decide each
        step's work without waiting for the device."""
        return torch.tensor([self.progress, self.queued], dtype=torch.float64)

    def set_extra_state(self, state: torch.Tensor) -> None:
        self.progress, self.queued = float(state[0]), int(state[1])
