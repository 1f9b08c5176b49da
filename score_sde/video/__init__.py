"""Clips (B, T, H, W, C) on the same SDEs, losses and samplers as images.

  masks         which frames are given: the training mix of masks and the masks named at
                sampling time ('past:4', 'past_future:2,2', '11000011', ...)
  loss          the masked DSM loss: given frames enter clean, the loss covers the others
  conditioning  score functions conditioned on given frames (masked model, classifier-free
                guidance over the mask, reconstruction guidance) for every sampler
  rollout       block-autoregressive sampling of clips longer than the network's
  clip_io       clips to animated GIFs, PNG strips and .npz

The networks live in score_sde/models/video.py, the data in score_sde/data/clips.py and
moving_digits.py, the modes (predict, interpolate) in score_sde/video_modes.py.
"""
