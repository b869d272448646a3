"""Run under mpiexec by tests/distributed/test_distributed.py: one request through the MPI runtime, then
(on rank 0) the same request simulated in one process and unpartitioned. Prints one JSON line
on rank 0 with the differences, the bytes counted and the bytes of the wire layout
(`prism_ops.wire`, what `prism_ops.cost` also counts). With quantized summaries it also reports
`err_step`, how far the simulated output moves under one code step in every quantized exchange
(`budgets.flip_one_code`): distributed and simulated sums differ in their last bits, which may
round a value on a boundary to the other code. With generation, `margins_sim` is the gap between
the two largest logits at each generated token of the simulated run (least over the batch).
With `--stop-after K`, a streamed run whose on_token asks to stop after K tokens goes first
(`ids_stopped`: what it returned), then the request itself on the same ranks: a stop message
left over would show in it.

    mpiexec -n 3 python tests/mpi/check_run.py --model gpt2 --tokens 37 --segment-size 4
"""

import argparse
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from budgets import flip_one_code  # noqa: E402
from prism_ops import cost, hf, models, partition_bounds  # noqa: E402
from prism_ops.distributed.comm import Communicator  # noqa: E402
from prism_ops.distributed.runtime import run_distributed
from prism_ops.request_types import Request
from prism_ops.hf import model_kind  # noqa: E402
from prism_ops.in_process import run_simulated  # noqa: E402
from prism_ops.strategy import attached_layers  # noqa: E402
from prism_ops.wire import payload_layouts  # noqa: E402

torch.set_num_threads(1)


def build(name):
    """The same model on every rank: real weights, or a small config with seeded weights (also
    any family of tests/model_zoo.py, by its id)."""
    from transformers import GPT2Config, GPT2LMHeadModel, ViTConfig, ViTModel

    torch.manual_seed(0)
    if name in models.NAMES:
        return models.load(name)[1]
    if name == "gpt2":
        cfg = GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=256, vocab_size=300, bos_token_id=0, eos_token_id=0)
        return GPT2LMHeadModel(cfg).eval()
    if name == "vit":
        cfg = ViTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                        image_size=32, patch_size=4)
        return ViTModel(cfg).eval()
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    from model_zoo import BY_ID

    if name in BY_ID:
        return BY_ID[name].build()
    raise SystemExit(f"unknown model {name}")


def request(model, args):
    g = torch.Generator().manual_seed(1)
    if model_kind(model) == "vision":
        return Request(pixel_values=torch.randn(1, 3, 32, 32, generator=g), output="hidden")
    vocab = model.config.vocab_size
    ids = torch.randint(0, min(vocab, 30000), (args.batch, args.tokens), generator=g)
    mask = None
    if args.pad:
        mask = torch.ones(args.batch, args.tokens, dtype=torch.long)
        mask[-1, -args.pad:] = 0
    return Request(ids=ids, mask=mask, output="hidden", generate=args.generate, temperature=args.temperature,
                   top_k=args.top_k, seed=3)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="gpt2")
    ap.add_argument("--tokens", type=int, default=37)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--pad", type=int, default=0)
    ap.add_argument("--segment-size", type=int, default=4)
    ap.add_argument("--generate", type=int, default=0)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--top-k", type=int, default=0)
    ap.add_argument("--levers", default="{}", help="JSON dict of levers")
    ap.add_argument("--stop-after", type=int, default=0, help="first a streamed run stopped after this many tokens")
    args = ap.parse_args()
    levers = json.loads(args.levers)

    comm = Communicator(timeout_s=120)
    model = build(args.model)
    runner = hf.configure(model, num_partitions=comm.size, segment_size=args.segment_size, comm=comm, **levers)
    req = request(model, args)
    stopped = None
    if args.stop_after:
        seen = []
        first = request(model, args)
        first.stream = True
        got = run_distributed(runner, comm, first if comm.rank == 0 else None, progress=False,
                              on_token=lambda t: seen.append(t) or len(seen) >= args.stop_after)
        stopped = got.token_ids if comm.rank == 0 else None
    res = run_distributed(runner, comm, req if comm.rank == 0 else None, progress=False)
    if comm.rank != 0:
        return
    config = hf.config_of(model)
    hf.configure(model, config)  # the same config, simulated
    head = model.get_output_embeddings() if req.generate else None
    logits = []
    hook = head.register_forward_hook(lambda m, i, o: logits.append(o.float())) if head is not None else None

    def simulate():  # (the Result, what err_step compares: the output, or with generation the logits)
        logits.clear()
        out = run_simulated(model, req, comm.size)
        return out, torch.stack([x.reshape(-1, x.shape[-1]) for x in logits]) if logits else out.output.float()

    sim, sim_values = simulate()
    err_step = 0.0
    if config.summary_bits:
        with flip_one_code():
            flipped = simulate()[1]
        n = min(len(flipped), len(sim_values))  # a flipped token may end generation early
        err_step = (flipped[:n] - sim_values[:n]).abs().max().item()
    if hook is not None:
        hook.remove()
    top2 = sim_values.topk(2, -1).values if req.generate else None
    model.set_attn_implementation("sdpa")
    exact = run_simulated(model, req, 1)
    B, N = (req.ids.shape if req.ids is not None else (1, sim.output.shape[1]))
    causal = model_kind(model) == "decoder"
    heads, channels = cost.ModelShape.from_config(model.config).row_shape(config.exchange)
    bounds = partition_bounds(N, comm.size, config.weights)
    layouts = payload_layouts(config, bounds, causal=causal, batch=B, heads=heads, channels=channels,
                              dtype=torch.float32)
    # Per layer: a sliding-window layer leaves out the rows and chunks no reader's window reaches; a
    # dense layer (dense_layers) runs its own config.
    layer_bytes = [sum(lay.nbytes for lay in payload_layouts(layer.config, bounds, causal=causal, batch=B, heads=heads,
                                                             channels=channels, dtype=torch.float32,
                                                             window=layer.window, layer=layer.index))
                   for layer in attached_layers(model)]
    out = dict(
        kind=model_kind(model), exchange=config.exchange, bounds=res.bounds,
        err_sim=(res.output.float() - sim.output.float()).abs().max().item(),
        err_exact=(res.output.float() - exact.output.float()).abs().max().item(),
        scale=sim.output.float().abs().max().item(),
        bytes=res.bytes_per_layer, expected_bytes=sum(lay.nbytes for lay in layouts), layer_bytes=layer_bytes,
        ids=res.token_ids, ids_sim=sim.token_ids, ids_stopped=stopped, ids_exact=exact.token_ids, err_step=err_step,
        margins_sim=None if top2 is None else (top2[..., 0] - top2[..., 1]).amin(-1).tolist(),
        logit_scale=None if top2 is None else sim_values.abs().max().item(),
    )
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    try:
        main()
    except Exception:  # noqa: BLE001 - any failure must end the whole job, not hang it
        import traceback

        traceback.print_exc()
        from mpi4py import MPI

        MPI.COMM_WORLD.Abort(1)
    sys.exit(0)
