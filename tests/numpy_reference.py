"""An independent NumPy implementation of SPEC.md section 4, for a linear softmax model.

Model: logits = x W + b; loss l_i = -sum_c y_ic log softmax(logits_i)_c.
Everything in float64, written from the formulas, sharing no code with the
package.
"""

import numpy as np


def per_example_losses(w, b, x, y):
    z = x @ w + b
    z = z - z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return -(y * log_p).sum(axis=1)


def subset_grad(w, b, x, y, mask, n):
    """grad of (1/n) sum_i mask_i l_i with respect to (W, b)."""
    z = x @ w + b
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    delta = (p - y) * mask[:, None] / n  # d loss / d logits
    return x.T @ delta, delta.sum(axis=0)


def flat(gw, gb):
    return np.concatenate([gw.ravel(), gb.ravel()])


def eps_of(w, b, gw, gb, rho, adaptive, eta):
    g = flat(gw, gb)
    if adaptive:
        t = np.abs(flat(w, b)) + eta
        norm = np.linalg.norm(t * g)
        e = rho * t * t * g / norm if norm > 0 else np.zeros_like(g)
    else:
        norm = np.linalg.norm(g)
        e = rho * g / norm if norm > 0 else np.zeros_like(g)
    return e[: w.size].reshape(w.shape), e[w.size :]


def sharp_mask(s, gamma):
    n = len(s)
    k = int(np.ceil(round(gamma * n, 9)))
    order = np.argsort(-s, kind="stable")  # largest first, ties: lower index first
    mask = np.zeros(n)
    mask[order[:k]] = 1.0
    return mask


def update(method, w, b, x, y, rho=0.05, gamma=0.5, adaptive=False, eta=0.01):
    """Returns (grad_W, grad_b, stats) for one step of `method`."""
    n = len(x)
    ones = np.ones(n)
    g_w, g_b = subset_grad(w, b, x, y, ones, n)
    if method in ("erm", "mixup"):
        return g_w, g_b, {}
    ew, eb = eps_of(w, b, g_w, g_b, rho, adaptive, eta)
    wp, bp = w + ew, b + eb
    l0 = per_example_losses(w, b, x, y)
    l1 = per_example_losses(wp, bp, x, y)
    s = l1 - l0
    stats = {"sharpness": s.mean(), "eps_norm": np.linalg.norm(flat(ew, eb))}
    if method in ("sam", "gmix"):
        gw, gb = subset_grad(wp, bp, x, y, ones, n)
        return gw, gb, stats
    mask = sharp_mask(s, gamma)
    sw, sb = subset_grad(wp, bp, x, y, mask, n)
    fw, fb = subset_grad(w, b, x, y, 1 - mask, n)
    g_sharp, g_flat = flat(sw, sb), flat(fw, fb)
    stats["sensitive_fraction"] = mask.mean()
    if method == "bgmix":
        g = g_sharp + g_flat
    else:
        norm = np.linalg.norm(g_flat)
        if norm == 0:
            g = g_sharp
        else:
            u = g_flat / norm
            along = g_sharp @ u
            g_perp = g_sharp - along * u
            g = g_flat + g_perp + max(along, 0.0) * u
        stats["conflict"] = float(g_sharp @ g_flat < 0)
    return g[: w.size].reshape(w.shape), g[w.size :], stats


# -- efficient schedules (SPEC.md section 4b) --------------------------------


def orthogonal_part(u, g):
    """v = u - (<u, g> / ||g||^2) g, and v = u when g == 0 (flat vectors)."""
    gg = g @ g
    return u if gg == 0 else u - (u @ g) / gg * g


def reused_update(g, v, reuse_scale):
    """A cheap step's update: g + reuse_scale * (||g|| / ||v||) v (g when v == 0)."""
    norm_v = np.linalg.norm(v)
    return g if norm_v == 0 else g + reuse_scale * np.linalg.norm(g) / norm_v * v
