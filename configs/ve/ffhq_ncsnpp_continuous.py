"""NCSN++ (cont.) on FFHQ 1024px with the VE SDE (a standalone config, as published)."""

import ml_collections

from score_sde.sampling import add_config_fields


def get_config():
    config = ml_collections.ConfigDict()

    config.training = training = ml_collections.ConfigDict()
    training.batch_size = 8
    training.n_iters = 2400001
    training.snapshot_freq = 50000
    training.log_freq = 50
    training.eval_freq = 100
    training.snapshot_freq_for_preemption = 5000
    training.snapshot_sampling = True
    training.sde = 'vesde'
    training.continuous = True
    training.likelihood_weighting = False
    training.n_jitted_steps = 2
    training.reduce_mean = True
    training.class_dropout = 0.1  # added (classifier-free guidance); unused when num_classes == 0

    config.sampling = sampling = ml_collections.ConfigDict()
    sampling.method = 'pc'
    sampling.predictor = 'reverse_diffusion'
    sampling.corrector = 'langevin'
    sampling.probability_flow = False
    sampling.snr = 0.15
    sampling.n_steps_each = 1
    sampling.noise_removal = True
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
    evaluate.batch_size = 1024
    evaluate.num_samples = 50000
    evaluate.begin_ckpt = 1
    evaluate.end_ckpt = 96
    # Added with the other configs' defaults, so that every config has the same eval fields.
    evaluate.enable_sampling = True
    evaluate.enable_loss = True
    evaluate.enable_bpd = False
    evaluate.bpd_dataset = 'test'

    config.data = data = ml_collections.ConfigDict()
    data.data_dir = ''  # tfds data_dir or an image folder; '' = TFDS_DATA_DIR / tfds default
    data.dataset = 'FFHQ'
    data.image_size = 1024
    data.centered = False
    data.random_flip = True
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
    # Plug in your own path to the tfrecords file.
    data.tfrecords_path = '/raid/song/ffhq-dataset/ffhq/ffhq-r10.tfrecords'

    config.model = model = ml_collections.ConfigDict()
    model.name = 'ncsnpp'
    model.scale_by_sigma = True
    model.sigma_max = 1348
    model.num_scales = 2000
    model.ema_rate = 0.9999
    model.sigma_min = 0.01
    model.normalization = 'GroupNorm'
    model.nonlinearity = 'swish'
    model.nf = 16
    model.ch_mult = (1, 2, 4, 8, 16, 32, 32, 32)
    model.num_res_blocks = 1
    model.attn_resolutions = (16,)
    model.dropout = 0.
    model.resamp_with_conv = True
    model.conditional = True
    model.fir = True
    model.fir_kernel = [1, 3, 3, 1]
    model.skip_rescale = True
    model.resblock_type = 'biggan'
    model.progressive = 'output_skip'
    model.progressive_input = 'input_skip'
    model.progressive_combine = 'sum'
    model.attention_type = 'ddpm'
    model.init_scale = 0.
    model.fourier_scale = 16
    model.conv_size = 3
    model.embedding_type = 'fourier'
    model.num_classes = 0  # added: > 0 makes the network class-conditional

    config.optim = optim = ml_collections.ConfigDict()
    optim.weight_decay = 0
    optim.optimizer = 'Adam'
    optim.lr = 2e-4
    optim.beta1 = 0.9
    optim.amsgrad = False
    optim.eps = 1e-8
    optim.warmup = 5000
    optim.grad_clip = 1.

    config.seed = 42
    return config
