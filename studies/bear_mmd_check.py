"""Why BEAR's MMD constraint was not met (issue 43, item 3): BEAR's behaviour VAE and an actor trained on the MMD
alone (the warm start), on a real dataset, with the quantities that say where the MMD comes from.

    JAX_PLATFORMS=cpu .venv/bin/python studies/bear_mmd_check.py DATASET.h5 [--steps 3000] [--every 500]
        [--kernel laplacian|gaussian] [--sigma S] [--vae-tau T] [--freeze-vae-after N] [--vae-lr LR]
        [--actor-loss mmd|mse]

It uses offrl.agents.bear's own pieces (the VAE loss, the policy's and the VAE's pre-tanh samples, the MMD), so
it measures offrl's BEAR, not a copy. Prints the share of saturated dataset actions, then every ``--every`` steps
on a fixed set of 1,024 training states: the policy's MMD to the VAE (``mmd``, as bear.actor_terms), the floor
(two VAE sample sets, bear.mmd_floor), the VAE's pre-tanh samples (mean |u|, their spread over z per state, the
share beyond |u| > 3, i.e. |tanh u| > 0.995), the policy's std and |mean|, the L1 distance from the policy's mean
to the VAE's per-state centre, how far that centre moved since the last report (``vae_centre_drift_l1``), and
the MMD the policy would score as a point mass at its own mean (``mmd_pi_mean_only``), with its own noise around
the VAE's centre (``mmd_pi_std_at_vae_centre``), or as a point mass at / Gaussian fitted to the VAE's samples.

Issue 43's table (docs/metrics.md, "BEAR") came from, on pick-place-v3, 40 episodes, correlated regime
(``offrl collect --task pick-place-v3 --episodes 40 --regime correlated``): the defaults before the fix
(``--kernel laplacian --sigma 10``), ``--vae-lr 3e-4``, ``--vae-tau 0.005``, ``--freeze-vae-after 1000``, each
also with ``--kernel gaussian --sigma 20``, and ``--actor-loss mse``.
"""

from __future__ import annotations

import argparse
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from offrl.agents import bear
from offrl.data.hdf5 import load_dataset


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("dataset")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--every", type=int, default=500)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sigma", type=float, default=10.0, help="kernel width (10: offrl's default before issue 43)")
    p.add_argument("--kernel", default="laplacian", help="laplacian (offrl's default before issue 43) or gaussian")
    p.add_argument("--num-samples", type=int, default=10)
    p.add_argument("--eps-clip", type=float, default=0.5, help="clip of the policy's N(0, 1) draws; 0: none")
    p.add_argument("--freeze-vae-after", type=int, default=0, help="stop the VAE's updates after this step; 0: never")
    p.add_argument("--vae-tau", type=float, default=0.0,
                   help="> 0: the MMD's behaviour samples from a Polyak average of the VAE with this rate")
    p.add_argument("--vae-lr", type=float, default=1e-3)
    p.add_argument("--actor-lr", type=float, default=1e-3)
    p.add_argument("--actor-loss", choices=["mmd", "mse"], default="mmd",
                   help="mse: the actor's mean regressed on the VAE's per-state centre (a fitting oracle)")
    args = p.parse_args()

    ds = load_dataset(args.dataset)
    obs = np.asarray(ds.observations, np.float32)
    mu, sd = obs.mean(0), obs.std(0) + 1e-3
    obs = (obs - mu) / sd
    act = np.asarray(ds.actions, np.float32)
    print(f"{args.dataset}: {len(act)} transitions, act_dim {act.shape[1]}")
    print("share of dataset actions with |a| >= 0.999 per dim:", np.round((np.abs(act) >= 0.999).mean(0), 3))
    u_data = np.arctanh(np.clip(act, -1 + 1e-7, 1 - 1e-7))  # the authors' atanh clamp (1e-7), in float64
    print("atanh of the saturated ones (authors' 1e-7 clamp, float32 input):",
          np.unique(np.round(np.abs(u_data[np.abs(act) >= 0.999]), 2))[:8])

    config = dataclasses.replace(bear.BEARConfig(), kernel=args.kernel, mmd_sigma=args.sigma,
                                 warmstart_steps=10**9, num_samples=args.num_samples)
    act_dim = act.shape[1]
    _, actor, vae = bear._nets(config, act_dim)
    state = bear.init(config, obs.shape[1], act_dim, jax.random.PRNGKey(args.seed))
    a_opt, v_opt = optax.adam(args.actor_lr), optax.adam(args.vae_lr)
    ap, vp = state.actor_params, state.vae_params
    a_os, v_os = a_opt.init(ap), v_opt.init(vp)
    data_o, data_a = jnp.asarray(obs), jnp.asarray(act)
    n = config.num_samples

    def policy_samples(ap, o, key):
        if args.eps_clip == 0.5:
            return bear._policy_samples(actor, ap, o, key, n)[0]
        mean, log_std = actor.apply(ap, o)
        eps = jax.random.normal(key, (n, *mean.shape))
        if args.eps_clip > 0:
            eps = jnp.clip(eps, -args.eps_clip, args.eps_clip)
        return mean + jnp.exp(log_std) * eps

    def mmd_pi(ap, vp, o, key):
        k1, k2 = jax.random.split(key)
        u_pi = policy_samples(ap, o, k1)
        u_b = jax.lax.stop_gradient(bear._behaviour_samples(vae, vp, o, k2, n, act_dim))
        return bear.mmd(jnp.swapaxes(u_b, 0, 1), jnp.swapaxes(u_pi, 0, 1), config.kernel, config.mmd_sigma)

    @jax.jit
    def step(ap, vp, vt, a_os, v_os, key, train_vae):
        kb, kv, ka = jax.random.split(key, 3)
        idx = jax.random.randint(kb, (args.batch,), 0, data_o.shape[0])
        batch = {"observations": data_o[idx], "actions": data_a[idx]}
        (vl, _), vg = jax.value_and_grad(bear.vae_terms, has_aux=True)(vp, state, batch, kv, config)
        vu, v_os = v_opt.update(vg, v_os, vp)
        vp = jax.tree.map(lambda new, old: jnp.where(train_vae, new, old), optax.apply_updates(vp, vu), vp)
        vt = optax.incremental_update(vp, vt, args.vae_tau) if args.vae_tau > 0 else vp
        if args.actor_loss == "mmd":
            ml, ag = jax.value_and_grad(lambda ap: mmd_pi(ap, vt, batch["observations"], ka).mean())(ap)
        else:
            centre = bear._behaviour_samples(vae, vp, batch["observations"], ka, n, act_dim).mean(0)

            def mse(ap):
                mean, log_std = actor.apply(ap, batch["observations"])
                return ((mean - centre) ** 2).sum(-1).mean() + log_std.mean()  # log_std pushed to its floor

            ml, ag = jax.value_and_grad(mse)(ap)
        au, a_os = a_opt.update(ag, a_os, ap)
        return optax.apply_updates(ap, au), vp, vt, a_os, v_os, vl, ml

    rng = np.random.default_rng(1)
    fixed = jnp.asarray(obs[rng.choice(len(obs), 1024, replace=False)])

    @jax.jit
    def report(ap, vp, key):
        k1, k2, k3, k4, k5 = jax.random.split(key, 5)
        m = mmd_pi(ap, vp, fixed, k1)
        ub1 = bear._behaviour_samples(vae, vp, fixed, k2, n, act_dim)  # (n, B, d)
        ub2 = bear._behaviour_samples(vae, vp, fixed, k3, n, act_dim)
        sw = lambda x: jnp.swapaxes(x, 0, 1)  # noqa: E731
        floor = bear.mmd(sw(ub1), sw(ub2), config.kernel, config.mmd_sigma)
        centre = jnp.broadcast_to(ub1.mean(0), ub1.shape)
        m_centre = bear.mmd(sw(ub2), sw(centre), config.kernel, config.mmd_sigma)
        g = ub1.mean(0) + ub1.std(0) * jax.random.normal(k4, ub1.shape)
        m_gauss = bear.mmd(sw(ub2), sw(g), config.kernel, config.mmd_sigma)
        mean, log_std = actor.apply(ap, fixed)
        eps = policy_samples(ap, fixed, k5) - mean  # the policy's own noise, times its std
        eps = eps / jnp.exp(log_std)
        pi_point = jnp.broadcast_to(mean, ub1.shape)  # the policy's mean, its std set to 0
        pi_centred = ub1.mean(0) + jnp.exp(log_std) * eps  # the policy's std around the VAE's centre
        m_point = bear.mmd(sw(ub2), sw(pi_point), config.kernel, config.mmd_sigma)
        m_centred = bear.mmd(sw(ub2), sw(pi_centred), config.kernel, config.mmd_sigma)
        return dict(mmd_pi_mean_only=m_point.mean(), mmd_pi_std_at_vae_centre=m_centred.mean(), mmd=m.mean(), floor=floor.mean(), mmd_vae_centre=m_centre.mean(), mmd_vae_gauss=m_gauss.mean(),
                    vae_abs_u=jnp.abs(ub1).mean(), vae_spread_u=ub1.std(0).mean(),
                    vae_u_gt3=(jnp.abs(ub1) > 3).mean(), pi_std=jnp.exp(log_std).mean(),
                    pi_abs_mean=jnp.abs(mean).mean(),
                    pi_to_vae_l1=jnp.abs(mean - ub1.mean(0)).sum(-1).mean())

    @jax.jit
    def centre_fn(vp, key):
        return bear._behaviour_samples(vae, vp, fixed, key, 50, act_dim).mean(0)

    c_prev = None
    vt = vp
    key = jax.random.PRNGKey(args.seed + 1)
    for t in range(1, args.steps + 1):
        key, k = jax.random.split(key)
        train_vae = args.freeze_vae_after == 0 or t <= args.freeze_vae_after
        ap, vp, vt, a_os, v_os, vl, ml = step(ap, vp, vt, a_os, v_os, k, train_vae)
        if t % args.every == 0:
            key, k = jax.random.split(key)
            r = {k_: round(float(v), 4) for k_, v in report(ap, vt, k).items()}
            c_now = np.asarray(centre_fn(vt, k))
            if c_prev is not None:
                r["vae_centre_drift_l1"] = round(float(np.abs(c_now - c_prev).sum(-1).mean()), 4)
            c_prev = c_now
            print(f"step {t}: vae_loss {float(vl):.4f} train_mmd {float(ml):.4f} {r}", flush=True)


if __name__ == "__main__":
    main()
