"""Defaults shared by the LSUN configs (256x256 RGB; also 256px CelebA-HQ, FFHQ), as published."""

import ml_collections

from score_sde.sampling import add_config_fields


def get_default_configs() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()

    config.training = training = ml_collections.ConfigDict()
    training.batch_size = 64
    training.n_iters = 2400001
    training.snapshot_freq = 50000
    training.log_freq = 50
    training.eval_freq = 100
    training.snapshot_freq_for_preemption = 5000  # extra "meta" checkpoints for pre-emption
    training.snapshot_sampling = True  # draw samples at every snapshot
    training.likelihood_weighting = False
    training.continuous = True
    training.n_jitted_steps = 5
    training.reduce_mean = False
    # Added: probability of replacing a class label by the null label (classifier-free
    # guidance); unused while model.num_classes == 0.
    training.class_dropout = 0.1
    # EDM's training noise levels (model.parameterization='edm'): ln sigma ~ N(P_mean, P_std^2).
    training.P_mean = -1.2
    training.P_std = 1.2

    config.sampling = sampling = ml_collections.ConfigDict()
    sampling.n_steps_each = 1
    sampling.noise_removal = True
    sampling.probability_flow = False
    sampling.snr = 0.075
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
    evaluate.begin_ckpt = 50
    evaluate.end_ckpt = 96
    evaluate.batch_size = 512
    evaluate.enable_sampling = True
    evaluate.num_samples = 50000
    evaluate.enable_loss = True
    evaluate.enable_bpd = False
    evaluate.bpd_dataset = 'test'

    config.data = data = ml_collections.ConfigDict()
    data.data_dir = ''  # tfds data_dir or an image folder; '' = TFDS_DATA_DIR / tfds default
    data.dataset = 'LSUN'
    data.image_size = 256
    data.random_flip = True
    data.centered = False
    data.uniform_dequantization = False
    data.num_channels = 3
    data.num_workers = -1  # decoding processes; -1: min(cores, 8), 0 for in-memory data
    data.corrupt_images = 'error'  # an undecodable image in an image folder: 'error' or 'skip'
    # Training data: a class-stratified fraction of the training split (fixed by subset_seed),
    # and generated samples (.npz shards or an image folder) making up synthetic_ratio of each batch.
    data.subset_fraction = 1.0
    data.subset_seed = 0
    data.synthetic = ''
    data.synthetic_ratio = 0.0

    config.model = model = ml_collections.ConfigDict()
    model.sigma_min = 0.01
    model.sigma_max = 378
    model.num_scales = 2000
    model.beta_min = 0.1
    model.beta_max = 20.
    model.dropout = 0.
    model.embedding_type = 'fourier'
    model.num_classes = 0  # added: > 0 makes the network class-conditional (embedding + null row)
    model.dtype = 'float32'  # compute dtype: 'float32' or 'bfloat16' (bf16 compute, float32 parameters)
    # 'auto': the SDE's published network convention (EDM's for training.sde='edm'); 'edm': EDM
    # preconditioning (score_sde/models/parameterization.py), which uses sigma_data.
    model.parameterization = 'auto'
    model.sigma_data = 0.5  # the data's std (EDM's value for images in [-1, 1])

    config.optim = optim = ml_collections.ConfigDict()
    optim.weight_decay = 0
    optim.optimizer = 'Adam'
    optim.lr = 2e-4
    optim.beta1 = 0.9
    optim.eps = 1e-8
    optim.warmup = 5000
    optim.grad_clip = 1.

    config.seed = 42
    return config
