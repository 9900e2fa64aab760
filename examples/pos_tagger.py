"""Part-of-speech tagging with a bidirectional LSTM: torch.nn.LSTM against fused_rnn.LSTM.

    python3 examples/pos_tagger.py [--epochs N]

A tagger must read both ways: "the light dims" and "light the lamp" start with the same word, and
only what follows (or precedes) tells a noun from a verb. The script generates a small tagged
corpus from a toy grammar with such ambiguous words (nothing is downloaded), builds one tagger
with torch.nn.LSTM, copies it and converts the copy to fused_rnn with fused_rnn.convert (same
initial weights), trains both on the same batches (variable-length, as packed sequences) and
prints each one's test accuracy and training time.
"""

import argparse
import copy
import random
import time

import torch
from torch.nn.utils.rnn import pack_sequence, pad_packed_sequence

import fused_rnn

# Word classes of the toy grammar; the ambiguous words appear under several tags.
LEXICON = {
    "DET": ["the", "a", "every", "this"],
    "ADJ": ["small", "old", "green", "light", "quick", "round"],
    "NOUN": ["dog", "lamp", "light", "run", "book", "park", "train", "watch", "plan"],
    "VERB": ["sees", "dims", "run", "light", "book", "train", "watch", "plan", "likes"],
    "ADV": ["quickly", "often", "today", "there"],
    "PREP": ["in", "near", "with", "under"],
    "PRON": ["we", "they", "you"],
    "CONJ": ["and", "but"],
}
TAGS = sorted(LEXICON)


def noun_phrase(rng):
    words = [("DET", rng.choice(LEXICON["DET"]))]
    words += [("ADJ", rng.choice(LEXICON["ADJ"])) for _ in range(rng.choice([0, 0, 1, 2]))]
    return words + [("NOUN", rng.choice(LEXICON["NOUN"]))]


def clause(rng):
    subject = [("PRON", rng.choice(LEXICON["PRON"]))] if rng.random() < 0.3 else noun_phrase(rng)
    words = subject + [("VERB", rng.choice(LEXICON["VERB"]))]
    if rng.random() < 0.6:
        words += noun_phrase(rng)
    if rng.random() < 0.4:
        words += [("PREP", rng.choice(LEXICON["PREP"]))] + noun_phrase(rng)
    if rng.random() < 0.3:
        words += [("ADV", rng.choice(LEXICON["ADV"]))]
    return words


def sentence(rng):
    words = clause(rng)
    if rng.random() < 0.3:
        words += [("CONJ", rng.choice(LEXICON["CONJ"]))] + clause(rng)
    return words


def corpus(size, seed):
    rng = random.Random(seed)
    return [sentence(rng) for _ in range(size)]


class Tagger(torch.nn.Module):
    def __init__(self, vocab, tags, embed=32, hidden=64):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, embed)
        self.lstm = torch.nn.LSTM(embed, hidden, num_layers=2, bidirectional=True)
        self.head = torch.nn.Linear(2 * hidden, tags)

    def forward(self, sentences):
        """sentences: list of 1-D word-index tensors -> padded logits [T, B, tags]."""
        packed = pack_sequence([self.embed(s) for s in sentences], enforce_sorted=False)
        states, _ = self.lstm(packed)
        padded, _ = pad_packed_sequence(states)
        return self.head(padded)


def encode(data, vocab):
    tag_index = {t: i for i, t in enumerate(TAGS)}
    return [(torch.tensor([vocab[w] for _, w in s]), torch.tensor([tag_index[t] for t, _ in s]))
            for s in data]


def batched(data, size, seed):
    order = list(range(len(data)))
    random.Random(seed).shuffle(order)
    return [[data[i] for i in order[k:k + size]] for k in range(0, len(order), size)]


def loss_of(model, batch):
    words, tags = zip(*batch)
    logits = model(list(words))
    targets = torch.nn.utils.rnn.pad_sequence(list(tags), padding_value=-100)
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(),
                                             ignore_index=-100)


def train(model, data, epochs, batch_size=32):
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    begin = time.perf_counter()
    for epoch in range(epochs):
        for batch in batched(data, batch_size, seed=epoch):
            optimizer.zero_grad()
            loss_of(model, batch).backward()
            optimizer.step()
    return time.perf_counter() - begin


@torch.no_grad()
def accuracy(model, data):
    words, tags = zip(*data)
    predicted = model(list(words)).argmax(-1)
    correct = sum((predicted[:len(t), i] == t).sum().item() for i, t in enumerate(tags))
    return correct / sum(len(t) for t in tags)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    train_raw, test_raw = corpus(1500, seed=0), corpus(300, seed=1)
    vocab = {w: i for i, w in enumerate(sorted({w for s in train_raw + test_raw for _, w in s}))}
    train_data, test_data = encode(train_raw, vocab), encode(test_raw, vocab)
    print(f"{len(train_data)} training and {len(test_data)} test sentences, {len(vocab)} words, "
          f"{len(TAGS)} tags")

    torch.manual_seed(0)
    reference = Tagger(len(vocab), len(TAGS))
    fused = fused_rnn.convert(copy.deepcopy(reference))  # same initial weights
    for name, model in (("torch.nn.LSTM", reference), ("fused_rnn.LSTM", fused)):
        seconds = train(model, train_data, args.epochs)
        print(f"{name:<15} test accuracy {accuracy(model, test_data):6.2%}   "
              f"training {seconds:5.1f} s")


if __name__ == "__main__":
    main()
