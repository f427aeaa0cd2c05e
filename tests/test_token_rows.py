"""The optimiser sees only the new placeholder rows (:class:`cifc_bench.diffusion.training.TokenRows`), bitwise what
AdamW over the whole embedding matrix followed by restoring every other row gave before."""

import torch

from cifc_bench.diffusion.training import TokenRows


def _steps(whole: bool, n_steps: int = 25):
    torch.manual_seed(0)
    emb = torch.nn.Parameter(torch.randn(1000, 16))
    new = [997, 998, 999]
    original = emb.detach().clone()
    if whole:
        emb.requires_grad_(True)
        params = [emb]
    else:
        tokens = TokenRows(emb, new)
        params = [tokens.rows]
    other = torch.nn.Parameter(torch.randn(8, 8))  # an adapter beside the rows, in its own group
    opt = torch.optim.AdamW([{"params": [other], "lr": 3e-3}, {"params": params, "lr": 1e-2}], weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 - s / n_steps)
    gen = torch.Generator().manual_seed(1)
    for _ in range(n_steps):
        idx = torch.cat([torch.tensor(new), torch.randint(0, 997, (20,), generator=gen), torch.tensor([998, 998])])
        loss = (emb[idx] * torch.randn(len(idx), 16, generator=gen)).sum() ** 2 / 100 + (other ** 2).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if whole:
            opt.step()
            with torch.no_grad():
                keep = torch.ones(1000, dtype=torch.bool)
                keep[new] = False
                emb[keep] = original[keep]
        else:
            tokens.pull_grad()
            opt.step()
            tokens.push()
        sched.step()
    return emb.detach(), other.detach(), original


def test_token_rows_give_bitwise_what_the_whole_matrix_gave():
    whole, other_whole, original = _steps(whole=True)
    rows, other_rows, _ = _steps(whole=False)
    assert torch.equal(whole, rows) and torch.equal(other_whole, other_rows)
    assert not torch.equal(rows[997:], original[997:])  # the new rows trained...
    assert torch.equal(rows[:997], original[:997])  # ...and no other row moved


def test_token_rows_keep_the_optimiser_state_to_the_new_rows():
    emb = torch.nn.Parameter(torch.randn(1000, 16))
    tokens = TokenRows(emb, [5, 6])
    assert tokens.rows.shape == (2, 16) and tokens.rows.is_leaf and tokens.rows.requires_grad
    emb[[5, 6]].sum().backward()
    tokens.pull_grad()
    assert emb.grad is None and torch.equal(tokens.rows.grad, torch.ones(2, 16))
    tokens.close()
    assert not emb.requires_grad
