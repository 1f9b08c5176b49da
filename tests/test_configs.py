"""Every shipped config builds its network with the expected number of parameters.

Counts come from `jax.eval_shape(model.init, ...)` (traced, never compiled). Expected values:
  * "published": counts of the published score_sde networks (ARCHITECTURE.md / the task brief);
  * "formula": `expected_params` below, an independent count from the architecture description
    (channel bookkeeping, no flax), itself checked against the three published counts.
"""

from __future__ import annotations

import glob
import importlib
import os

import jax
import jax.numpy as jnp
import pytest

from score_sde.models import count_params, get_model, input_shape
from score_sde.sampling import (
    NEW_CONFIG_FIELDS,
    get_sampler_from_config,
    sampler_options_from_config,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PUBLISHED = {
    "vp/cifar10_ddpmpp_continuous": 61_804_419,
    "ve/cifar10_ncsnpp_deep_continuous": 107_587_075,
    "vp/ddpm/cifar10": 35_218_947,
}


def shipped_configs() -> list[str]:
    names = []
    for path in glob.glob(os.path.join(ROOT, "configs", "**", "*.py"), recursive=True):
        rel = os.path.relpath(path, os.path.join(ROOT, "configs"))[:-3]
        if not rel.endswith("__init__") and not os.path.basename(rel).startswith("default_"):
            names.append(rel)
    return sorted(names)


def load(name: str):
    return importlib.import_module("configs." + name.replace("/", ".")).get_config()


# ----------------------------------------------------------------------------------------------
# Independent parameter count.


def conv(k: int, cin: int, cout: int) -> int:
    return k * k * cin * cout + cout


def dense(cin: int, cout: int) -> int:
    return cin * cout + cout


def norm(c: int) -> int:
    return 2 * c  # GroupNorm scale + bias


def attention(c: int) -> int:
    return norm(c) + 4 * dense(c, c)  # q, k, v, out projections


def resblock(cin: int, cout: int, temb: int, kind: str, resample: bool = False) -> int:
    n = norm(cin) + conv(3, cin, cout) + norm(cout) + conv(3, cout, cout)
    n += dense(temb, cout) if temb else 0
    if kind == "biggan":
        n += conv(1, cin, cout) if (cin != cout or resample) else 0
    else:  # ddpm blocks: NIN shortcut (a dense layer) when channels change
        n += dense(cin, cout) if cin != cout else 0
    return n


def unet_params(m, image_size: int, channels: int) -> int:
    """NCSN++ / DDPM++ / DDPM U-Net parameters from config.model (ddpm == NCSN++ special case)."""
    is_ddpm = m.name == "ddpm"
    kind = "ddpm" if is_ddpm else m.resblock_type
    prog = "none" if is_ddpm else m.progressive
    prog_in = "none" if is_ddpm else m.progressive_input
    fourier = (not is_ddpm) and m.embedding_type == "fourier"
    # Blocks get a time (and/or class) embedding of 4 nf channels.
    nf, temb = m.nf, (4 * m.nf if m.conditional or m.get("num_classes", 0) else 0)
    total = 0
    if fourier:
        total += nf  # the fixed random Fourier frequencies are a parameter too
    if m.conditional:
        total += dense(2 * nf if fourier else nf, temb) + dense(temb, temb)

    res, cur, pyr = image_size, nf, channels
    total += conv(3, channels, nf)
    skips = [nf]
    levels = len(m.ch_mult)
    for i, mult in enumerate(m.ch_mult):
        for _ in range(m.num_res_blocks):
            total += resblock(cur, nf * mult, temb, kind)
            cur = nf * mult
            total += attention(cur) if res in m.attn_resolutions else 0
            skips.append(cur)
        if i == levels - 1:
            continue
        if kind == "ddpm":
            total += conv(3, cur, cur) if m.resamp_with_conv else 0
        else:
            total += resblock(cur, cur, temb, kind, resample=True)
        res //= 2
        if prog_in == "input_skip":
            total += conv(1, channels, cur)
            cur = 2 * cur if m.progressive_combine == "cat" else cur
        elif prog_in == "residual":
            total += conv(3, pyr, cur)
            pyr = cur
        skips.append(cur)

    total += 2 * resblock(cur, cur, temb, kind) + attention(cur)

    pyr_out = None
    for i in reversed(range(levels)):
        out = nf * m.ch_mult[i]
        for _ in range(m.num_res_blocks + 1):
            total += resblock(cur + skips.pop(), out, temb, kind)
            cur = out
        total += attention(cur) if res in m.attn_resolutions else 0
        if prog == "output_skip":
            total += norm(cur) + conv(3, cur, channels)
        elif prog == "residual":
            total += norm(cur) + conv(3, cur, cur) if pyr_out is None else conv(3, pyr_out, cur)
            pyr_out = cur
        if i != 0:
            if kind == "ddpm":
                total += conv(3, cur, cur) if m.resamp_with_conv else 0
            else:
                total += resblock(cur, cur, temb, kind, resample=True)
            res *= 2
    assert not skips
    if prog != "output_skip":
        total += norm(cur) + conv(3, cur, channels)
    return total


def small_unet_params(m, image_size: int, channels: int) -> int:
    """The lean small U-Net: one skip per level, middle = block + attention."""
    nf, temb = m.nf, 4 * m.nf
    fourier = m.embedding_type == "fourier"
    total = (nf if fourier else 0) + dense(2 * nf if fourier else nf, temb) + dense(temb, temb)
    total += conv(3, channels, nf)
    res, cur, skips = image_size, nf, []

    def stage(cin: int, cout: int, res: int) -> int:
        n = 0
        for _ in range(m.num_res_blocks):
            n += resblock(cin, cout, temb, "ddpm") + (attention(cout) if res in
                                                       m.attn_resolutions else 0)
            cin = cout
        return n

    for i, mult in enumerate(m.ch_mult):
        total += stage(cur, nf * mult, res)
        cur = nf * mult
        skips.append(cur)
        if i != len(m.ch_mult) - 1:
            total += conv(3, cur, cur)
            res //= 2
    total += resblock(cur, cur, temb, "ddpm") + attention(cur)
    for i in reversed(range(len(m.ch_mult))):
        total += stage(cur + skips.pop(), nf * m.ch_mult[i], res)
        cur = nf * m.ch_mult[i]
        if i != 0:
            total += conv(3, cur, cur)
            res *= 2
    return total + norm(cur) + conv(3, cur, channels)


# name -> backbone channel multipliers, dilations (shallow first), refine features (deep first)
NCSNV2 = {
    "ncsnv2_64": ((1, 2, 2, 2), (1, 1, 2, 4), (2, 2, 2, 1)),
    "ncsnv2_128": ((1, 2, 2, 4, 4), (1, 1, 1, 2, 4), (4, 2, 2, 1, 1)),
    "ncsnv2_256": ((1, 2, 2, 2, 4, 4), (1, 1, 1, 1, 2, 4), (4, 2, 2, 2, 1, 1)),
}
NORM_PARAMS = {"InstanceNorm++": 3, "InstanceNorm": 2, "VarianceNorm": 1, "GroupNorm": 2}


def ncsnv2_params(m, channels: int) -> int:
    """NCSNv2: dilated ResNet backbone + RefineNet (bias-free RCU/CRP convs)."""
    mults, dilations, refine = NCSNV2[m.name]
    nf = m.nf

    def nrm(c: int) -> int:
        return NORM_PARAMS[m.normalization] * c

    def res_block(cin: int, cout: int, down: bool, dil: int) -> int:
        if down:  # conv keeps channels, then (dilated conv | conv-mean-pool), shortcut alike
            return 2 * nrm(cin) + conv(3, cin, cin) + conv(3, cin, cout) + (
                conv(3, cin, cout) if dil > 1 else conv(1, cin, cout))
        shortcut = 0 if cin == cout else (conv(3, cin, cout) if dil > 1 else conv(1, cin, cout))
        return nrm(cin) + shortcut + conv(3, cin, cout) + nrm(cout) + conv(3, cout, cout)

    def rcu(c: int, blocks: int) -> int:
        return blocks * 2 * 9 * c * c

    total, cur, stage_channels = conv(3, channels, nf), nf, []
    for i, (mult, dil) in enumerate(zip(mults, dilations, strict=True)):
        total += res_block(cur, mult * nf, i > 0, dil) + res_block(mult * nf, mult * nf, False,
                                                                   dil)
        cur = mult * nf
        stage_channels.append(cur)
    prev = None
    for i, (c, f) in enumerate(zip(reversed(stage_channels), refine, strict=True)):
        ins = [c] if prev is None else [c, prev]
        total += sum(rcu(ci, 2) for ci in ins)
        total += 0 if prev is None else sum(conv(3, ci, f * nf) for ci in ins)
        total += 2 * 9 * (f * nf) ** 2 + rcu(f * nf, 3 if i == len(refine) - 1 else 1)
        prev = f * nf
    return total + nrm(prev) + conv(3, prev, channels)


def temporal_layers(m, image_size: int) -> list[int]:
    """Channels of the space-time network's temporal attention layers: one after every block
    of the image U-Net (and its middle) at a resolution in m.temporal_resolutions; the small
    U-Net's up path has num_res_blocks blocks per level, NCSN++'s one hook per level."""
    up = m.num_res_blocks if m.image_model == "small_unet" else 1
    out = []
    for level, mult in enumerate(m.ch_mult):
        if image_size // 2**level in m.temporal_resolutions:
            out += [m.nf * mult] * (m.num_res_blocks + up)
    lowest = image_size // 2 ** (len(m.ch_mult) - 1)
    return out + ([m.nf * m.ch_mult[-1]] if lowest in m.temporal_resolutions else [])


def video_params(config) -> int:
    """'spacetime': the image U-Net + temporal attention (norm, q/k/v/out, relative-position
    table) + the indicator's 1x1 map; 'video_concat': the image U-Net on T*C channels."""
    m, d = config.model, config.data
    image = config.copy_and_resolve_references()
    image.model.name = m.image_model
    frames = d.num_frames
    indicator = m.nf if m.get("mask_conditioning", False) else 0
    if m.name == "video_concat":
        image.data.num_channels = frames * d.num_channels
        return expected_params(image) + frames * indicator
    heads = m.temporal_heads
    table = (2 * m.temporal_max_distance + 1) * heads
    return expected_params(image) + indicator + sum(
        attention(c) + table for c in temporal_layers(m, d.image_size))


def expected_params(config) -> int:
    m, d = config.model, config.data
    if m.name in ("spacetime", "video_concat"):
        return video_params(config)
    if m.name in NCSNV2:
        return ncsnv2_params(m, d.num_channels)
    if m.name == "small_unet":
        n = small_unet_params(m, d.image_size, d.num_channels)
    else:
        n = unet_params(m, d.image_size, d.num_channels)
    if m.get("num_classes", 0):
        n += (m.num_classes + 1) * 4 * m.nf  # class embedding table incl. the null row
    return n


def traced_params(config) -> int:
    model = get_model(config)
    x = jnp.zeros(input_shape(config))
    t = jnp.ones((x.shape[0],))
    rngs = {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)}
    shapes = jax.eval_shape(lambda: model.init(rngs, x, t, train=False))
    return count_params(shapes["params"])


# ----------------------------------------------------------------------------------------------


def test_every_published_config_is_shipped():
    names = set(shipped_configs())
    groups = (("vp/", 5), ("vp/ddpm/", 6), ("subvp/", 5), ("ve/", 11), ("ve/ncsnv2/", 3))
    for group, count in groups:
        in_group = [n for n in names if n.startswith(group) and "/" not in n[len(group):]]
        assert len(in_group) == count, (group, in_group)
    assert {"digits", "tiny"} <= names


@pytest.mark.parametrize("name,count", sorted(PUBLISHED.items()))
def test_formula_reproduces_published_counts(name, count):
    assert expected_params(load(name)) == count


@pytest.mark.parametrize("name", shipped_configs())
def test_param_count(name):
    config = load(name)
    expected = PUBLISHED.get(name, expected_params(config))
    assert traced_params(config) == expected


def test_edm_cifar10_ddpmpp_param_count():
    """EDM's CIFAR-10 DDPM++ (channels 128 x (2, 2, 2), 4 blocks, attention at 16): 55,732,739
    parameters, EDM's published 55.73M; EDM preconditioning adds none. The formula agrees."""
    config = load("edm/cifar10_ddpmpp")
    assert traced_params(config) == expected_params(config) == 55_732_739
    assert traced_params(load("digits_edm")) == traced_params(load("digits"))


def test_class_conditional_adds_only_the_embedding_table():
    config = load("tiny")
    base = traced_params(config)
    config.model.num_classes = 10
    assert traced_params(config) == base + 11 * 4 * config.model.nf


@pytest.mark.parametrize("name", shipped_configs())
def test_config_has_the_fields_the_driver_reads(name):
    c = load(name)
    for field in ("batch_size", "n_iters", "snapshot_freq", "log_freq", "eval_freq",
                  "snapshot_freq_for_preemption", "snapshot_sampling", "likelihood_weighting",
                  "continuous", "n_jitted_steps", "reduce_mean", "sde"):
        assert field in c.training, field
    for field in ("method", "predictor", "corrector", "snr", "n_steps_each", "noise_removal",
                  "probability_flow", *NEW_CONFIG_FIELDS):
        assert field in c.sampling, field
    for field in ("dataset", "image_size", "num_channels", "centered", "random_flip",
                  "uniform_dequantization"):
        assert field in c.data, field
    for field in ("name", "ema_rate", "nf", "num_scales", "sigma_min", "sigma_max",
                  "dropout"):
        assert field in c.model, field
    for field in ("lr", "warmup", "grad_clip", "optimizer", "beta1", "eps", "weight_decay"):
        assert field in c.optim, field
    for field in ("batch_size", "num_samples", "begin_ckpt", "end_ckpt", "enable_sampling",
                  "enable_loss", "enable_bpd", "bpd_dataset"):
        assert field in c.eval, field
    assert "seed" in c


def test_sampler_fields_are_set_from_the_command_line(monkeypatch):
    from score_sde import main, sde_lib

    argv = ["main", "--workdir=unused", "--config", f"{ROOT}/configs/digits.py",
            "--config.sampling.method=heun",
            "--config.sampling.nfe=7", "--config.sampling.grid=karras",
            "--config.sampling.S_churn=2.5", "--config.sampling.guidance_scale=1.5",
            "--config.sampling.class_labels=(3, 7)", "--config.sampling.sigma_range=(0.01, 20)"]
    monkeypatch.setattr("sys.argv", argv)  # ml_collections reads the overrides from sys.argv
    main.parse_flags(argv)
    config = main.FLAGS.config
    main.FLAGS.unparse_flags()
    s = config.sampling
    assert (s.nfe, s.grid, s.S_churn, s.guidance_scale, s.class_labels, s.sigma_range) == (
        7, "karras", 2.5, 1.5, (3, 7), (0.01, 20))
    assert s.eta is None and s.S_tmax is None  # unset: the sampler's own default
    sde = sde_lib.VPSDE()
    sample = get_sampler_from_config(config, sde, (2, 2), eps=1e-3)
    _, nfe = sample(jax.random.PRNGKey(0), lambda x, t: -x)
    assert int(nfe) == 7  # heun at nfe=7: 4 points, 2 * 4 - 1 score calls
    assert sampler_options_from_config(config)[1]["sigma_range"] == (0.01, 20)
