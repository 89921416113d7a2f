"""What sampling and evaluation share: `generate` (latents -> songs), slot decoding, song files."""
