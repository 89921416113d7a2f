"""Music representation: the REMI-z vocabulary, MIDI <-> events <-> tokens, song layout, keys."""
