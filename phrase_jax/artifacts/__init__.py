"""The files each stage leaves for the next, one module per artifact: where each file lives,
what it must hold, written once and read (and checked) in one place.

    run_dir      what every run folder shares: config.json, eval_config.json, the errors
    vae_run      a train_vae workdir: config.json, vocab.json, checkpoints/ and best/
    latents      an extract_latents workdir: manifest.json and the npz shards it lists
    ldm_run      a train_ldm workdir: config.json, section_vocab.json, checkpoints/
    samples      a sample workdir: song_NNN.* files and samples.json
    bundle       a trained model to share: bundle.json + safetensors weights (load_pretrained)
    real_statistics  real_statistics.json: held-out songs' MIDI descriptors, for comparing
                 songs with them where the data are absent (in eval folders and bundles)
"""
