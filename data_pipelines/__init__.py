"""Dataset preparation (MIDI -> ArrayRecord shards) and Grain input pipelines."""
