"""Defaults for the embedded CPU dataset: scikit-learn's digits (1,797 8x8 grey images).

Same fields as the published defaults, sized for a few-minute run on a 2-core CPU: the small
U-Net (~0.46M parameters), batch 64, a few thousand steps, frequent logs and snapshots.
"""

import ml_collections

from score_sde.sampling import add_config_fields


def get_default_configs() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()

    config.training = training = ml_collections.ConfigDict()
    training.batch_size = 64
    training.n_iters = 3001
    training.snapshot_freq = 1000
    training.log_freq = 50
    training.eval_freq = 250
    training.snapshot_freq_for_preemption = 500
    training.snapshot_sampling = True
    training.likelihood_weighting = False
    training.continuous = True
    training.n_jitted_steps = 1
    training.reduce_mean = True
    # Probability of replacing a class label by the null label (classifier-free guidance);
    # unused while model.num_classes == 0.
    training.class_dropout = 0.1
    # EDM's training noise levels (model.parameterization='edm'): ln sigma ~ N(P_mean, P_std^2).
    training.P_mean = -1.2
    training.P_std = 1.2

    config.sampling = sampling = ml_collections.ConfigDict()
    sampling.n_steps_each = 1
    sampling.noise_removal = True
    sampling.probability_flow = False
    sampling.snr = 0.16
    add_config_fields(sampling)  # nfe, grid, eta, ... (score_sde.sampling)
    # --mode sample (score_sde.generate): how many samples, in global batches of what size, as
    # 'npz' shards, 'png' files or 'both', into output_dir ('' = workdir/<eval_folder>/samples_<step>)
    sampling.num_samples = 64
    sampling.batch_size = 64
    sampling.output_format = 'npz'
    sampling.output_dir = ''

    config.eval = evaluate = ml_collections.ConfigDict()
    evaluate.ckpt = -1  # snapshot for sample/likelihood (step = ckpt * snapshot_freq); -1 = newest
    evaluate.fid_stats = ''  # reference .npz of --mode fid_stats, for FID/KID in eval mode
    evaluate.inception_weights = ''  # FID Inception weights file (.pth or .msgpack), user-supplied
    evaluate.begin_ckpt = 1
    evaluate.end_ckpt = 3
    evaluate.batch_size = 256
    evaluate.enable_sampling = True
    evaluate.num_samples = 512
    evaluate.enable_loss = True
    evaluate.enable_bpd = False
    evaluate.bpd_dataset = 'test'

    config.data = data = ml_collections.ConfigDict()
    data.data_dir = ''  # tfds data_dir or an image folder; '' = TFDS_DATA_DIR / tfds default
    data.dataset = 'digits'
    data.image_size = 8
    data.random_flip = False  # digits are not mirror-symmetric
    data.centered = True
    data.uniform_dequantization = False
    data.num_channels = 1
    data.num_workers = -1  # decoding processes; -1: min(cores, 8), 0 for in-memory data
    data.corrupt_images = 'error'  # an undecodable image in an image folder: 'error' or 'skip'
    # Training data: a class-stratified fraction of the training split (fixed by subset_seed),
    # and generated samples (.npz shards or an image folder) making up synthetic_ratio of each batch.
    data.subset_fraction = 1.0
    data.subset_seed = 0
    data.synthetic = ''
    data.synthetic_ratio = 0.0

    config.model = model = ml_collections.ConfigDict()
    model.name = 'small_unet'
    model.sigma_min = 0.01
    model.sigma_max = 50
    model.num_scales = 1000
    model.beta_min = 0.1
    model.beta_max = 20.
    model.dropout = 0.1
    model.embedding_type = 'positional'
    model.fourier_scale = 16
    model.scale_by_sigma = False
    model.ema_rate = 0.999
    # EMA rate min(0.999, (1 + step) / (10 + step)): a constant 0.999 keeps 5% of the random
    # initialisation after 3,000 steps, which ruins the probability-flow samplers.
    model.ema_warmup = True
    model.normalization = 'GroupNorm'
    model.nonlinearity = 'swish'
    model.nf = 32
    model.ch_mult = (1, 2)
    model.num_res_blocks = 1
    model.attn_resolutions = (4,)
    model.conditional = True
    model.num_classes = 0  # 10 for class-conditional digits
    model.dtype = 'float32'  # compute dtype: 'float32' or 'bfloat16' (bf16 compute, float32 parameters)
    # 'auto': the SDE's published network convention (EDM's for training.sde='edm'); 'edm': EDM
    # preconditioning (score_sde/models/parameterization.py), which uses sigma_data.
    model.parameterization = 'auto'
    model.sigma_data = 0.75  # digits' measured pixel std in [-1, 1] (configs/digits_edm.py)

    config.optim = optim = ml_collections.ConfigDict()
    optim.weight_decay = 0
    optim.optimizer = 'Adam'
    optim.lr = 2e-3
    optim.beta1 = 0.9
    optim.eps = 1e-8
    optim.warmup = 100
    optim.grad_clip = 1.

    config.seed = 42
    return config
