"""A recurrent policy over rollouts of concatenated episodes: fused_rnn.LSTM with resets against
torch.nn.LSTM on the episodes split apart and padded.

    python3 examples/rl_rollout.py [--iterations N]

A reinforcement-learning rollout fills each row of a batch with episodes one after another: row b
ends one episode and starts the next mid-sequence, wherever its environment said "done". The
recurrent state must start afresh there. The usual way out is to cut every row into its episodes
and pad them into a batch of their own; fused_rnn.LSTM takes `resets` instead and restarts the
state inside its kernels.

The simulated environment (nothing is downloaded) shows a cue, one of four, on the first step of
each episode and noise after it; at every step the policy must name the episode's cue, so it has
to remember it, and a state carried over from the episode before would mislead it. Both policies
start from the same weights, train on the same rollouts (behaviour cloning: cross-entropy against
the cue) and print their losses side by side, which agree to float32 rounding, and their time per
iteration.
"""

import argparse
import copy
import time

import torch
from torch.nn.utils.rnn import pack_padded_sequence

import fused_rnn

CUES, NOISE = 4, 4


def rollout(steps, batch, shortest, longest, generator):
    """Observations [T, B, CUES + NOISE], targets [T, B] (the episode's cue) and resets [T, B]
    (an episode starts), for rows of episodes of shortest..longest steps (the last one cut)."""
    obs = torch.zeros(steps, batch, CUES + NOISE)
    obs[..., CUES:] = torch.randn(steps, batch, NOISE, generator=generator)
    targets = torch.zeros(steps, batch, dtype=torch.long)
    resets = torch.zeros(steps, batch, dtype=torch.bool)
    for b in range(batch):
        t = 0
        while t < steps:
            length = int(torch.randint(shortest, longest + 1, (1,), generator=generator))
            cue = int(torch.randint(CUES, (1,), generator=generator))
            obs[t, b, cue] = 1.0
            targets[t:t + length, b] = cue
            resets[t, b] = True
            t += length
    return obs, targets, resets


def episodes(resets):
    """Every episode as (row, first step, length), row by row."""
    steps, batch = resets.shape
    found = []
    for b in range(batch):
        starts = resets[:, b].nonzero().flatten().tolist() + [steps]
        found += [(b, s, e - s) for s, e in zip(starts, starts[1:])]
    return found


class Policy(torch.nn.Module):
    def __init__(self, lstm_class, hidden):
        super().__init__()
        self.lstm = lstm_class(CUES + NOISE, hidden)
        self.head = torch.nn.Linear(hidden, CUES)


def loss_with_resets(policy, obs, targets, resets):
    """The rollout as it is: one call, the state restarted where an episode starts."""
    out, _ = policy.lstm(obs, resets=resets)
    logits = policy.head(out)
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())


def loss_split_and_padded(policy, obs, targets, resets):
    """The rollout cut into its episodes, padded into a batch of its own (longest first) and run
    packed; the head and the loss over the packed rows."""
    found = sorted(episodes(resets), key=lambda e: -e[2])
    longest = found[0][2]
    padded = obs.new_zeros(longest, len(found), obs.size(2))
    padded_targets = targets.new_zeros(longest, len(found))
    for k, (b, s, n) in enumerate(found):
        padded[:n, k] = obs[s:s + n, b]
        padded_targets[:n, k] = targets[s:s + n, b]
    lengths = torch.tensor([n for _, _, n in found])
    out, _ = policy.lstm(pack_padded_sequence(padded, lengths))
    wanted = pack_padded_sequence(padded_targets, lengths).data
    return torch.nn.functional.cross_entropy(policy.head(out.data), wanted)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=256)
    args = parser.parse_args()

    torch.manual_seed(0)
    reference = Policy(torch.nn.LSTM, args.hidden)
    fused = Policy(fused_rnn.LSTM, args.hidden)
    fused.load_state_dict(copy.deepcopy(reference.state_dict()))
    runs = {"fused_rnn.LSTM, resets": (fused, loss_with_resets),
            "torch.nn.LSTM, split and padded": (reference, loss_split_and_padded)}
    optimizers = {name: torch.optim.Adam(policy.parameters(), lr=3e-3)
                  for name, (policy, _) in runs.items()}
    seconds = {name: 0.0 for name in runs}
    generator = torch.Generator().manual_seed(1)
    worst = 0.0
    for iteration in range(args.iterations):
        obs, targets, resets = rollout(args.steps, args.batch, 10, 60, generator)
        losses = {}
        for name, (policy, loss_fn) in runs.items():
            start = time.perf_counter()
            loss = loss_fn(policy, obs, targets, resets)
            optimizers[name].zero_grad()
            loss.backward()
            optimizers[name].step()
            seconds[name] += time.perf_counter() - start
            losses[name] = loss.item()
        a, b = losses.values()
        worst = max(worst, abs(a - b))
        if iteration % 5 == 0 or iteration == args.iterations - 1:
            print(f"iteration {iteration:3d}: loss " +
                  ", ".join(f"{name} {value:.4f}" for name, value in losses.items()))
    for name, total in seconds.items():
        print(f"{name}: {1e3 * total / args.iterations:.1f} ms per iteration")
    ratio = seconds["fused_rnn.LSTM, resets"] / seconds["torch.nn.LSTM, split and padded"]
    print(f"time ratio (fused_rnn / split and padded): {ratio:.2f}")
    print(f"largest loss difference between the two: {worst:.2e}")


if __name__ == "__main__":
    main()
