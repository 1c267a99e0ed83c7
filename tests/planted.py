"""Synthetic per-layer states with planted geometry: the known answers the geometry and profile tests check.

Text harmful items sit at base + 3u, harmless at base − u (noise centred per group, so the means are exact):
the refusal direction is r = 4u with ||u_l|| = U_NORMS[l].
"""

from __future__ import annotations

import torch

from explorer.model.states import StateBatch

L, D, N_PER_LABEL = 3, 16, 8

U_NORMS = (0.5, 1.0, 2.0)  # planted ||u_l|| per layer


def unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def orthonormal_pair(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-layer unit vectors ``a_l ⟂ b_l`` ``[L, D]`` in float64."""
    g = torch.Generator().manual_seed(seed)
    a = unit(torch.randn(L, D, generator=g, dtype=torch.float64))
    b = torch.randn(L, D, generator=g, dtype=torch.float64)
    b = unit(b - (b * a).sum(-1, keepdim=True) * a)
    return a, b


U_HAT, V_HAT = orthonormal_pair(1)  # planted refusal axis and an orthogonal axis

U = U_HAT * torch.tensor(U_NORMS, dtype=torch.float64)[:, None]  # [L, D]


def text_states() -> tuple[torch.Tensor, torch.Tensor]:
    """(harmful, harmless) ``[N, L, D]`` float64: base + 3u and base − u plus noise centred per group,
    so the group means are exactly base + 3u and base − u."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(L, D, generator=g, dtype=torch.float64)
    groups = []
    for shift in (3.0, -1.0):
        noise = 0.01 * torch.randn(N_PER_LABEL, L, D, generator=g, dtype=torch.float64)
        noise -= noise.mean(dim=0)
        groups.append(base + shift * U + noise)
    return groups[0], groups[1]

HARMFUL_IDS = [f"h{i}" for i in range(N_PER_LABEL)]

HARMLESS_IDS = [f"s{i}" for i in range(N_PER_LABEL)]


def state_batch(
    harmful: torch.Tensor, harmless: torch.Tensor, modality: str, ids: tuple[list[str], list[str]] | None = None
) -> StateBatch:
    h_ids, s_ids = ids or (HARMFUL_IDS, HARMLESS_IDS)
    n_h, n_s = harmful.shape[0], harmless.shape[0]
    return StateBatch(
        states=torch.cat([harmful, harmless]).to(torch.float32),
        item_ids=list(h_ids[:n_h]) + list(s_ids[:n_s]),
        labels=["harmful"] * n_h + ["harmless"] * n_s,  # type: ignore[list-item]
        modalities=[modality] * (n_h + n_s),  # type: ignore[list-item]
        instructions=[f"instruction {i}" for i in range(n_h + n_s)],
    )
