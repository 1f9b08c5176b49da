"""Consistency distillation on CIFAR-10 with the published settings of Song et al. (2023)
(openai/consistency_models_cifar10, configs/cifar10_ve_cd.py): N = 18, Heun teacher step,
target = stop-gradient of the student (mu = 0), batch 512, RAdam lr 4e-4 warmed up over 10M
images, no gradient clipping, no dropout, EMA 0.9999, 800k iterations. The published distance
is LPIPS, whose weights are not shipped: 'l2' here; for the published setting add
--config.consistency.distance=lpips --config.consistency.lpips_weights=lpips_vgg.npz (the file
made by scripts/convert_lpips_weights.py; README, "Consistency models").

Teacher: the published score_sde DDPM++ (cont., VP) release, converted on the fly:
  --mode distill --init_from_published=PATH/checkpoint_26 \
  --config.consistency.teacher_config=configs/vp/cifar10_ddpmpp_continuous.py
(the published CD used EDM's own CIFAR-10 model as teacher). The student has the teacher's
network (61.8M parameters) with EDM's inputs (sigma_data 0.5) and starts from its weights.
"""

from score_sde.configs.consistency import make_consistency
from score_sde.configs.vp.cifar10_ddpmpp_continuous import get_config as get_teacher_config


def get_config():
    config = make_consistency(get_teacher_config(), 'cd', num_levels=18, distance='l2',
                              teacher_solver='heun', target_ema=0.0, weighting='uniform',
                              teacher_config='configs/vp/cifar10_ddpmpp_continuous.py')
    training = config.training
    training.batch_size = 512
    training.n_iters = 800001
    training.snapshot_freq = 10000
    training.snapshot_freq_for_preemption = 5000
    model = config.model
    model.sigma_data = 0.5
    model.dropout = 0.
    model.ema_rate = 0.9999
    optim = config.optim
    optim.optimizer = 'RAdam'
    optim.lr = 4e-4
    optim.warmup = int(1e7 / training.batch_size)  # 10M images
    optim.grad_clip = -1.  # none
    return config
