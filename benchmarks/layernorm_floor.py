"""The layer-normalized layers against their matrix products alone: how far fused_rnn's
LayerNormLSTM / LayerNormGRU are from what oneDNN's products of the same call take, and what the
reference composite (the suite's "reference" row) takes, interleaved round by round in one
process (CPU, float32, I = H, one layer, one direction).

    python3 benchmarks/layernorm_floor.py [--shapes 50x64x512] [--rounds 15]
                                          [--kinds layernorm_lstm,layernorm_gru]

"products" runs, through the oneDNN ops fused_rnn's CPU path uses (weights packed once a call),
the forward's input projection over all steps and one recurrent product a step; with backward
also the input's gradient, a hidden-state gradient product a step and the two weight gradients
(each one product over all rows): the floor that no layer of these shapes can go under on this
machine. A target stated as a fraction of the reference's time is reachable only where the floor
is below it (issue 18's 0.33x; NOTES entry 60).
"""

import argparse

import torch

from implementations import GATES, Case, build_fused_rnn, build_reference, make_inputs
from zoneout import median_ms

PACK = torch.ops.mkldnn._reorder_linear_weight
LINEAR = torch.ops.mkldnn._linear_pointwise


def linear(x, w):
    return LINEAR(x, w, None, "none", [], "")


def build_products(case):
    """A closure running the case's matrix products alone (shapes as the layer's, random data)."""
    T, B, H, G = case.steps, case.batch, case.hidden, GATES[case.kind]
    N = T * B
    x, h = torch.randn(N, case.input_size), torch.randn(B, H)
    w_ih, w_hh = torch.randn(G * H, case.input_size), torch.randn(G * H, H)
    grad_gates, grad_step = torch.randn(N, G * H), torch.randn(B, G * H)

    def run():
        linear(x, PACK(w_ih, N))
        w_hh_packed = PACK(w_hh, B)
        for _ in range(T):
            linear(h, w_hh_packed)
        if not case.backward:
            return
        linear(grad_gates, PACK(w_ih.t().contiguous(), N))
        w_hh_t_packed = PACK(w_hh.t().contiguous(), B)
        for _ in range(T):
            linear(grad_step, w_hh_t_packed)
        x_t = x.t().contiguous()
        linear(x_t, grad_gates.t())  # W_ih's gradient, transposed
        linear(x_t, grad_gates.t())  # W_hh's: the same shapes with I = H
    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", default="50x64x512")
    parser.add_argument("--kinds", default="layernorm_lstm,layernorm_gru")
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    print(f"{args.rounds} interleaved rounds, {torch.get_num_threads()} threads, float32\n")
    print("| layer | T | B | H | pass | products (ms) | fused_rnn (ms) | reference (ms) | "
          "products / reference | fused_rnn / reference |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for shape in args.shapes.split(","):
        T, B, H = (int(v) for v in shape.split("x"))
        for kind in args.kinds.split(","):
            for backward in (False, True):
                case = Case("layer", kind, backward, T, B, H, H, torch.float32, "cpu")
                x, states = make_inputs(case)
                ours, reference = build_fused_rnn(case), build_reference(case)
                ms = median_ms({"products": build_products(case),
                                "fused_rnn": lambda: ours(x, states),
                                "reference": lambda: reference(x, states)}, args.rounds)
                print(f"| {kind} | {T} | {B} | {H} | {'fwd+bwd' if backward else 'fwd'} | "
                      f"{ms['products']:.1f} | {ms['fused_rnn']:.1f} | {ms['reference']:.1f} | "
                      f"{ms['products'] / ms['reference']:.3f} | "
                      f"{ms['fused_rnn'] / ms['reference']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
