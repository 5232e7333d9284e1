"""Training with Lightning: configs, LightningModules, the run folder, DDP, prediction.

``train(config, run_dir)`` (:mod:`cryomap.train.run`) and ``predict_map(run_or_ckpt, star)``
(:mod:`cryomap.train.predict`) are the library entry points behind ``cryomap train`` and
``cryomap predict``.
"""
