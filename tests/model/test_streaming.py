"""The streaming generator against the parallel frame-causal forward, and its sessions."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from pomstream.model import SnapshotError, StreamGenerator, load_model, save_model
from tests.support.models import randomized_model


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("spatial,decay,local,temporal,digits", [
    (True, True, True, "per_position", False), (False, False, False, "global", False),
    (True, True, False, "global", False), (False, False, True, "per_position", False),
    (True, True, True, "per_position", True), (True, True, True, "per_position", "mixer")])
def test_step_equals_parallel_forward(spatial, decay, local, temporal, digits):
    """Frame f streamed against the states of frames < f (clean, t=0) equals the parallel
    frame-causal forward over the clip with those frames at t=0 and frame f at its level
    (``digits="mixer"``: with the cross-PoM to the prompt's digit tokens)."""
    extra = dict(prompt_encoder="digits", cond_norm=True) if digits else {}
    if digits == "mixer":
        extra["prompt_mixer"] = True
    model = randomized_model(spatial_mixer=spatial, temporal_decay=decay, local_mixer=local,
                             temporal_mixer=temporal, **extra)
    cfg = model.cfg
    B, nf = 2, 5
    x = torch.randn(B, nf, cfg.channels, cfg.frame_size, cfg.frame_size, dtype=torch.float64)
    cond = model.encode_prompts(["digit 1", "digits 2 and 3"])
    states = model.empty_states(B, dtype=torch.float64)
    for f in range(nf):
        level = torch.full((B,), 0.37 + 0.1 * f, dtype=torch.float64)
        v_stream, _ = model.step(x[:, f], level, cond, states)
        t = torch.zeros(B, f + 1, dtype=torch.float64)
        t[:, f] = level
        v_par = model(x[:, : f + 1], t, cond)[:, f]
        assert rel_err(v_stream, v_par) < 1e-9, f
        _, states = model.step(x[:, f], torch.zeros(B, dtype=torch.float64), cond, states)


def test_generator_frame_equals_parallel_forward(tiny_model):
    """The generator's own frames: one Euler step from the session's noise gives
    x0 = eps - v(eps, t=1), v from the parallel forward over the clean past frames."""
    gen = StreamGenerator(tiny_model)
    session = gen.session("digits 4 and 2", seed=7, steps=1, sampler="euler")
    latents = []
    for _ in range(4):
        session.next_frame()
        latents.append(session.last_latent)
    rng = torch.Generator().manual_seed(7)
    shape = gen.autoencoder.latent_shape
    noise = [torch.randn(shape, generator=rng).double() for _ in latents]
    cond = tiny_model.encode_prompts(["digits 4 and 2"])
    for f in range(len(latents)):
        clip = torch.stack(latents[:f] + [noise[f]])[None]  # (1, f+1, C, H, W)
        t = torch.zeros(1, f + 1, dtype=torch.float64)
        t[0, f] = 1.0
        v = tiny_model(clip, t, cond)[0, f]
        assert rel_err(latents[f], noise[f] - v) < 1e-9


@pytest.mark.parametrize("temporal,mixer", [("global", False), ("per_position", False),
                                            ("per_position", True)])
def test_batched_sessions_equal_alone(temporal, mixer):
    extra = dict(prompt_encoder="digits", prompt_mixer=True) if mixer else {}
    model = randomized_model(temporal_mixer=temporal, local_mixer=temporal != "global",
                             **extra).float()
    gen = StreamGenerator(model)
    specs = [("digit 1", 1, 1.0), ("digits 5 and 6", 2, 2.5), ("digits 7, 8 and 9", 3, 1.0)]
    alone = []
    for prompt, seed, g in specs:
        s = gen.session(prompt, seed=seed, steps=3, guidance=g)
        alone.append(np.stack([s.next_frame() for _ in range(4)]))
    sessions = [gen.session(p, seed=seed, steps=3, guidance=g) for p, seed, g in specs]
    batched = [[] for _ in specs]
    for _ in range(4):
        for i, frame in enumerate(gen.step(sessions)):
            batched[i].append(frame)
    for i in range(len(specs)):
        diff = np.abs(np.stack(batched[i]).astype(int) - alone[i].astype(int))
        assert diff.max() <= 1, (i, diff.max())  # float32 GEMMs of other shapes may round
        assert (diff == 0).mean() > 0.99
    # and the prompts matter: the three sessions differ
    assert not np.array_equal(batched[0][0], batched[2][0])


def test_session_cost_constant(tiny_model):
    gen = StreamGenerator(tiny_model)
    s = gen.session("digit 3", steps=1)
    s.next_frame()
    before = s.state_bytes
    for _ in range(30):
        s.next_frame()
    assert s.state_bytes == before and s.frame_index == 31


@pytest.mark.parametrize("temporal", ["global", "per_position"])
def test_snapshot_restore_fork_prompt_change(temporal):
    gen = StreamGenerator(randomized_model(temporal_mixer=temporal))
    s = gen.session("digit 3", seed=5, steps=2, guidance=1.5)
    for _ in range(3):
        s.next_frame()
    snap = s.snapshot()
    fork = s.fork()
    variant = s.fork(seed=99)
    ref = [s.next_frame() for _ in range(3)]
    restored = gen.restore(snap)
    assert restored.frame_index == 3 and restored.prompt == "digit 3"
    assert all(np.array_equal(a, restored.next_frame()) for a in ref)
    assert all(np.array_equal(a, fork.next_frame()) for a in ref)
    assert not np.array_equal(ref[0], variant.next_frame())
    # a new prompt changes what comes next, and the snapshot remembers it
    other = gen.restore(snap)
    other.set_prompt("digits 8 and 8")
    changed = other.next_frame()
    assert not np.array_equal(changed, ref[0])
    again = gen.restore(other.snapshot())
    assert again.prompt == "digits 8 and 8"


def test_snapshot_rejects_bad_input(tiny_model):
    gen = StreamGenerator(tiny_model)
    snap = gen.session("digit 1").snapshot()
    with pytest.raises(SnapshotError):
        gen.restore(b"not a snapshot")
    with pytest.raises(SnapshotError):
        gen.restore(snap[: len(snap) // 2])
    other = StreamGenerator(randomized_model(seed=1))
    with pytest.raises(SnapshotError, match="other weights"):
        other.restore(snap)
    with pytest.raises(ValueError, match="at most"):
        gen.session("x" * 500)
    with pytest.raises(ValueError, match="steps"):
        gen.session("digit 1", steps=0)


RESUME_SCRIPT = """
import sys, numpy as np
from pomstream.model import StreamGenerator, load_model
gen = StreamGenerator(load_model(sys.argv[1]))
s = gen.restore(open(sys.argv[2], "rb").read())
np.save(sys.argv[3], np.stack([s.next_frame() for _ in range(4)]))
"""


def test_restore_in_fresh_process(tmp_path, tiny_model):
    path = save_model(tiny_model.float(), tmp_path / "tiny.safetensors")
    gen = StreamGenerator(load_model(path))
    s = gen.session("digits 1 and 2", seed=3, steps=2, guidance=2.0, context_noise=0.1)
    for _ in range(3):
        s.next_frame()
    (tmp_path / "snap.bin").write_bytes(s.snapshot())
    expected = np.stack([s.next_frame() for _ in range(4)])
    subprocess.run([sys.executable, "-c", RESUME_SCRIPT, str(path), str(tmp_path / "snap.bin"),
                    str(tmp_path / "frames.npy")], check=True)
    assert np.array_equal(np.load(tmp_path / "frames.npy"), expected)


def test_bf16_model_keeps_float32_state(tiny_model):
    gen = StreamGenerator(tiny_model.to(torch.bfloat16))
    s = gen.session("digit 2", steps=2)
    for _ in range(3):
        frame = s.next_frame()
    assert frame.shape == (16, 16, 3)
    assert all(st.total.dtype == torch.float32 and st.count.dtype == torch.float32
               for st in s.states)


def test_version_1_snapshot_of_per_position_states_still_restores():
    """Snapshots written before per-position counts were stored once (version 1: one count
    per position) restore into the same frames as the current format."""
    import json
    import struct

    from safetensors.torch import load as st_load
    from safetensors.torch import save as st_save

    from pomstream.model.streaming import SNAPSHOT_MAGIC

    gen = StreamGenerator(randomized_model(temporal_mixer="per_position", dtype=torch.float32))
    session = gen.session("digit 4", seed=3, steps=2, guidance=2.0)
    session.next_frame()
    data = session.snapshot()
    start = len(SNAPSHOT_MAGIC)
    (n,) = struct.unpack("<I", data[start : start + 4])
    header = json.loads(data[start + 4 : start + 4 + n])
    tensors = st_load(data[start + 4 + n :])
    L = gen.model.blocks[0].positions
    for name in list(tensors):
        if name.endswith(".count"):
            tensors[name] = tensors[name].expand(-1, L, -1).contiguous()
    header["version"] = 1
    head = json.dumps(header).encode()
    old = SNAPSHOT_MAGIC + struct.pack("<I", len(head)) + head + st_save(tensors)
    assert len(old) > len(data)
    want = [session.next_frame() for _ in range(2)]
    restored = gen.restore(old)
    got = [restored.next_frame() for _ in range(2)]
    for a, b in zip(got, want, strict=True):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("own, frame0, later, bad", [
    ({"steps": 1, "first_steps": 3}, {"steps": 3}, {"steps": 1}, {"first_steps": -1}),
    ({"steps": 2, "guidance": 5.0, "first_guidance": 2.0}, {"guidance": 2.0},
     {"guidance": 5.0}, {"first_guidance": -1.0}),
], ids=["steps", "guidance"])
def test_first_frame_gets_its_own_sampling(tiny_model, own, frame0, later, bad):
    """first_steps / first_guidance: frame 0 sampled with its own setting, later frames
    with the common one; a session at frame 0 batched with one further on makes what each
    makes alone, and a snapshot keeps the setting."""
    from dataclasses import replace

    gen = StreamGenerator(tiny_model)
    base = {"guidance": 2.0, **own}
    s = gen.session("digits 4 and 2", seed=3, **base)
    frames = [s.next_frame() for _ in range(3)]
    common = {k: v for k, v in base.items() if not k.startswith("first_")}
    ref = gen.session("digits 4 and 2", seed=3, **{**common, **frame0})
    expected = [ref.next_frame()]
    ref.params = replace(ref.params, **later)
    expected += [ref.next_frame() for _ in range(2)]
    assert all(np.array_equal(a, b) for a, b in zip(frames, expected, strict=True))
    plain = gen.session("digits 4 and 2", seed=3, **common).next_frame()
    assert not np.array_equal(frames[0], plain)
    # one session at frame 0 beside one at frame 3: the same frames as each alone
    late = gen.restore(s.snapshot())
    assert late.params == s.params
    late_alone = gen.restore(s.snapshot())
    together = gen.step([late, gen.session("digits 4 and 2", seed=3, **base)])
    assert np.array_equal(together[1], frames[0])
    assert np.array_equal(together[0], late_alone.next_frame())
    with pytest.raises(ValueError, match=next(iter(bad))):
        gen.session("digit 1", **bad)


def test_guidance_on_frame_0_alone_drops_the_unconditional_branch_after_it(tiny_model):
    """Unguided later frames need no unconditional states: they are dropped after frame 0
    (half the network rows from frame 1 on), and the frames are what a session that keeps
    them makes; a snapshot holds the conditional states only."""
    from dataclasses import replace

    gen = StreamGenerator(tiny_model)
    session = gen.session("digit 7", seed=1, first_guidance=3.0)
    assert session.params.cfg_at(0) and session.states_uncond is not None
    frames = [session.next_frame() for _ in range(3)]
    assert not session.params.cfg_at(1) and session.states_uncond is None
    ref = gen.session("digit 7", seed=1, guidance=3.0)  # keeps unconditional states
    expected = [ref.next_frame()]
    ref.params = replace(ref.params, guidance=1.0)
    expected += [ref.next_frame() for _ in range(2)]
    assert all(np.array_equal(a, b) for a, b in zip(frames, expected, strict=True))
    assert len(session.snapshot()) < len(ref.snapshot())
    restored = gen.restore(session.snapshot())
    assert restored.states_uncond is None
    assert np.array_equal(restored.next_frame(), ref.next_frame())
    # guided later frames keep them from frame 0 on, even with frame 0 unguided
    later = gen.session("digit 7", seed=1, guidance=3.0, first_guidance=1.0)
    later.next_frame()
    assert later.states_uncond is not None
    # batched at frame 0 with a session guided throughout, each keeps what it needs
    alone = gen.session("digit 7", seed=1, guidance=3.0)
    want = [alone.next_frame() for _ in range(2)]
    first_only = gen.session("digit 7", seed=1, first_guidance=3.0)
    both = gen.session("digit 7", seed=1, guidance=3.0)
    gen.step([first_only, both])
    assert first_only.states_uncond is None and both.states_uncond is not None
    assert np.array_equal(gen.step([first_only, both])[1], want[1])


def test_card_overrides_name_every_sampling_setting():
    """The torch-free override reader (CLI and server settings) knows every field."""
    from dataclasses import fields

    from pomstream.model.files import SAMPLING_KEYS
    from pomstream.model.streaming import GenerationParams

    assert set(SAMPLING_KEYS) == {f.name for f in fields(GenerationParams)}
