"""`--mode train_classifier`: the noise-conditional classifier of config.classifier.

Trains the classifier of classifier guidance (controllable.classifier_guidance) on noisy data of
config.data under the config's SDE, with the loop settings of config.classifier_training
(n_iters, batch_size, log_freq, snapshot_freq, eps). Checkpoints go to workdir/classifier (a
resumed run continues from the newest); `inference.load_classifier_fn` restores the EMA weights.
"""

from __future__ import annotations

import jax
from etils.epath import Path

from score_sde import checkpoints, classifier_training, losses, sde_lib, storage
from score_sde import logging_utils as log
from score_sde.data import get_data_scaler, get_dataset


def train(config, workdir: str | Path) -> object:
    """Train config.classifier on noisy data; checkpoints in workdir/classifier."""
    from score_sde.models import classifier as cls_models

    ct = config.get("classifier_training", None)
    get = (lambda k, d: ct.get(k, d)) if ct is not None else (lambda k, d: d)
    n_iters, batch_size = int(get("n_iters", 2000)), int(get("batch_size", 64))
    log_freq, snap = int(get("log_freq", 100)), int(get("snapshot_freq", 1000))
    sde, _ = sde_lib.get_sde(config)
    model = cls_models.get_classifier(config)
    optimizer = losses.get_optimizer(config)
    step_fn = jax.jit(classifier_training.get_classifier_step_fn(
        config, sde, model, optimizer, eps=float(get("eps", 1e-5))))
    scaler = get_data_scaler(config)
    ckpts = checkpoints.Checkpoints(storage.path(workdir) / "classifier", async_save=False)
    state = jax.jit(lambda r: classifier_training.init_classifier_state(r, config, optimizer))(
        jax.random.PRNGKey(int(config.seed) + 7))
    state, resumed = ckpts.restore_latest(state)
    step = int(state.step)
    log.say(f"Training {config.classifier.name} for {n_iters} steps"
            + (f", resuming at {resumed}" if resumed is not None else ""))
    data = get_dataset(config, "train", batch_size=batch_size).iterate(start=step)
    try:
        while step < n_iters:
            batch = next(data)
            state, metrics = step_fn(state, dict(batch, image=scaler(batch["image"])))
            step += 1
            if step % log_freq == 0:
                log.say(f"step {step}: loss {float(metrics['loss']):.4f}, "
                        f"noisy accuracy {float(metrics['accuracy']):.3f}")
            if step % snap == 0 or step == n_iters:
                ckpts.save_snapshot(step, state)
    finally:
        ckpts.wait()
        ckpts.close()
    return state
