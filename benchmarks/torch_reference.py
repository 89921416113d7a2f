"""The PyTorch reference PhraseVAE layout, timed the way the reference trains and decodes.

transformers `T5ForConditionalGeneration` (d_model 512, d_ff 1024, 3+3 layers, 6 heads x 64,
vocab 1000) under `t5.`, plus the bottleneck `layer_norm` / `proj` / `post_proj`, the layout
`phrase_jax.interop.vae_from_torch` reads, so the JAX benchmark can load the very same weights.

    reference = build_reference(config)                    # torch.nn.Module, train mode
    step = make_train_step(reference, batch)               # forward + backward + AdamW
    ids = greedy_decode(reference, z_bl, max_len=64)       # past_key_values loop, [B, max_len]

torch and transformers are imported lazily: only `--reference` needs them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from phrase_jax.models.vae import VAEConfig
from phrase_jax.music.vocab import BOS, EOS, PAD


def _torch():
    try:
        import torch
        import transformers
    except ImportError as error:
        raise SystemExit(
            f"--reference needs torch and transformers ({error}); run `make install-parity`"
        ) from None
    return torch, transformers


def build_reference(config: VAEConfig, *, seed: int = 0):
    """A randomly initialised reference PhraseVAE (torch.nn.Module) with `config`'s sizes."""
    torch, transformers = _torch()

    class ReferencePhraseVAE(torch.nn.Module):
        def __init__(self):
            super().__init__()
            t5_config = transformers.T5Config(
                vocab_size=config.vocab_size,
                d_model=config.d_model,
                d_kv=config.head_dim,
                d_ff=config.d_ff,
                num_layers=config.num_encoder_layers,
                num_decoder_layers=config.num_decoder_layers,
                num_heads=config.num_heads,
                relative_attention_num_buckets=config.relative_buckets,
                relative_attention_max_distance=config.relative_max_distance,
                dropout_rate=config.dropout_rate,
                layer_norm_epsilon=config.norm_eps,
                feed_forward_proj="relu",
                tie_word_embeddings=True,
                is_encoder_decoder=True,
                decoder_start_token_id=BOS,
                pad_token_id=PAD,
                eos_token_id=EOS,
            )
            self.t5 = transformers.T5ForConditionalGeneration(t5_config)
            self.layer_norm = torch.nn.LayerNorm(config.joined_width)
            self.proj = torch.nn.Linear(config.joined_width, 2 * config.latent_dim)
            self.post_proj = torch.nn.Linear(config.latent_dim, config.joined_width)

        def memory(self, z_bl):
            return self.post_proj(z_bl).reshape(-1, config.num_queries, config.d_model)

        def forward(self, batch):
            """(loss, ce, kl) of a phrase batch with z sampled (training)."""
            states = self.t5.encoder(
                input_ids=batch["encoder_ids"], attention_mask=batch["encoder_mask"]
            ).last_hidden_state
            joined = states[:, : config.num_queries].reshape(states.shape[0], -1)
            moments = self.proj(self.layer_norm(joined))
            mean, logvar = moments[:, : config.latent_dim], moments[:, config.latent_dim :]
            z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
            out = self.t5(
                encoder_outputs=(self.memory(z),),
                decoder_input_ids=batch["decoder_inputs"],
                labels=batch["labels"],
            )
            kl = (-0.5 * torch.sum(1 + logvar - mean**2 - logvar.exp(), -1)).mean()
            kl = kl / config.latent_dim
            return out.loss + 0.01 * kl, out.loss, kl

    torch.manual_seed(seed)
    return ReferencePhraseVAE().train()


def torch_batch(batch: Mapping[str, np.ndarray]) -> dict:
    """A docs/design.md VAE batch as the torch tensors the reference forward takes."""
    torch, _ = _torch()
    labels = np.where(batch["decoder_mask"], batch["decoder_targets"], -100)
    return {
        "encoder_ids": torch.tensor(np.asarray(batch["encoder_ids"]), dtype=torch.long),
        "encoder_mask": torch.tensor(np.asarray(batch["encoder_mask"]), dtype=torch.long),
        "decoder_inputs": torch.tensor(np.asarray(batch["decoder_inputs"]), dtype=torch.long),
        "labels": torch.tensor(labels, dtype=torch.long),
    }


def make_train_step(
    reference, batch: Mapping[str, np.ndarray], *, learning_rate: float = 1e-4
) -> Callable[[], float]:
    """One reference VAE-stage step (forward, backward, AdamW lr 1e-4 wd 1e-3) per call;
    returns the loss (a Python float, so the step has finished)."""
    torch, _ = _torch()
    optimizer = torch.optim.AdamW(reference.parameters(), lr=learning_rate, weight_decay=1e-3)
    tensors = torch_batch(batch)

    def step() -> float:
        reference.train()
        optimizer.zero_grad(set_to_none=True)
        loss, _, _ = reference(tensors)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    return step


def greedy_decode(reference, z_bl: np.ndarray, *, max_len: int) -> np.ndarray:
    """Greedy ids int32 [B, max_len] from latents [B, latent], `[PAD]` after a row's `[EOS]`.

    The transformers-style loop: one token per call, `past_key_values` carry the self-attention
    cache and (after the first call) the cross-attention K/V; stops when every row has ended.
    """
    torch, transformers = _torch()
    reference.eval()
    with torch.no_grad():
        memory = reference.memory(torch.tensor(np.asarray(z_bl), dtype=torch.float32))
        encoder_outputs = transformers.modeling_outputs.BaseModelOutput(last_hidden_state=memory)
        batch = memory.shape[0]
        tokens = torch.full((batch, 1), BOS, dtype=torch.long)
        done = torch.zeros(batch, dtype=torch.bool)
        out = torch.full((batch, max_len), PAD, dtype=torch.long)
        past = None
        for position in range(max_len):
            step = reference.t5(
                encoder_outputs=encoder_outputs,
                decoder_input_ids=tokens,
                past_key_values=past,
                use_cache=True,
            )
            past = step.past_key_values
            next_b = step.logits[:, -1].argmax(-1)
            next_b = torch.where(done, torch.full_like(next_b, PAD), next_b)
            out[:, position] = next_b
            done |= next_b == EOS
            if bool(done.all()):
                break
            tokens = next_b[:, None]
    return out.numpy().astype(np.int32)


def perturb_(module, *, seed: int = 0) -> None:
    """Perturbs every parameter in place (norm scales start at 1, biases at 0, so an untouched
    tensor could hide a wrong mapping), at the init's own scale: larger weights make fp32 itself
    drift from fp64 by ~1e-3. Tied parameters are one tensor and stay tied."""
    torch, _ = _torch()
    generator = torch.Generator().manual_seed(seed)
    noise = lambda p: torch.randn(p.shape, generator=generator, dtype=p.dtype)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.mul_(1.0 + 0.2 * noise(parameter))
            parameter.add_(0.02 * noise(parameter))


def state_dict_numpy(reference) -> dict[str, np.ndarray]:
    """The reference weights as numpy, for `vae_from_torch.load_torch_state_dict`."""
    return {k: v.detach().cpu().numpy() for k, v in reference.state_dict().items()}


# The paper-size reference DiT (diffusers StableAudioDiTModel), as in tests/test_dit_parity.py.
DIT_PAPER = dict(
    sample_size=512,
    in_channels=64,
    num_layers=6,
    attention_head_dim=32,
    num_attention_heads=16,
    num_key_value_attention_heads=8,
    out_channels=64,
    cross_attention_dim=128,
    time_proj_dim=128,
    global_states_input_dim=128,
    cross_attention_input_dim=128,
)


def make_dit_denoise(batch_size: int, *, seed: int = 0):
    """(reference_call, ours_call): one denoising step of the paper-size diffusers DiT and of
    our PhraseLDM backbone (`denoise`, jitted) on the very same weights and inputs, each
    returning numpy [B, 512, 64] (so the step has finished)."""
    torch, _ = _torch()
    try:
        import diffusers
        from diffusers.models.embeddings import get_1d_rotary_pos_embed
    except ImportError as error:
        message = f"--reference needs diffusers ({error}); run `make install-parity`"
        raise SystemExit(message) from None
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from phrase_jax.interop import ldm_from_diffusers

    torch.manual_seed(seed)
    reference = diffusers.StableAudioDiTModel(**DIT_PAPER).eval()
    config = ldm_from_diffusers.config_from_diffusers(reference.config)
    graphdef, state = nnx.split(ldm_from_diffusers.from_diffusers(reference.state_dict(), config))
    rng = np.random.default_rng(seed)
    n, d = DIT_PAPER["sample_size"], DIT_PAPER["in_channels"]
    x = rng.standard_normal((batch_size, n, d)).astype(np.float32)
    steps = np.full(batch_size, 500)
    global_in = rng.standard_normal((batch_size, DIT_PAPER["global_states_input_dim"]))
    memory = rng.standard_normal((batch_size, 1, DIT_PAPER["cross_attention_input_dim"]))
    global_in, memory = global_in.astype(np.float32), memory.astype(np.float32)
    rotary = get_1d_rotary_pos_embed(
        DIT_PAPER["attention_head_dim"] // 2, n + 1, use_real=True, repeat_interleave_real=False
    )
    tensors = dict(
        hidden_states=torch.from_numpy(x).transpose(1, 2),
        timestep=torch.from_numpy(steps),
        encoder_hidden_states=torch.from_numpy(memory),
        global_hidden_states=torch.from_numpy(global_in)[:, None, :],
    )

    def reference_call() -> np.ndarray:
        with torch.no_grad():
            y = reference(**tensors, rotary_embedding=rotary, return_dict=False)[0]
        return y.transpose(1, 2).numpy()

    denoise = jax.jit(lambda s, *a: nnx.merge(graphdef, s).denoise(*a))
    inputs = (jnp.asarray(x), jnp.asarray(steps, jnp.float32), global_in, memory)
    return reference_call, lambda: np.asarray(denoise(state, *inputs))
