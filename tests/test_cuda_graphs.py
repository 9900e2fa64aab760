"""CUDA graphs: a whole training step (forward, backward, optimizer step) of a model using our
LSTM and GRU, captured with torch.cuda.graph and replayed on new batches, gives the eager step's
loss and parameters (so no op of ours synchronizes with the host or leaves the current stream)."""

import copy

import pytest
import torch

import fused_rnn
from conftest import CUDA_READY

pytestmark = pytest.mark.skipif(not CUDA_READY, reason="needs a GPU and the CUDA kernels built in")
T, FEATURES, CLASSES = 9, 16, 5


class Tagger(torch.nn.Module):
    def __init__(self, hidden):
        super().__init__()
        self.lstm = fused_rnn.LSTM(FEATURES, hidden, num_layers=2, bidirectional=True)
        self.gru = fused_rnn.GRU(2 * hidden, hidden, num_layers=2)
        self.head = torch.nn.Linear(hidden, CLASSES)

    def forward(self, x):
        return self.head(self.gru(self.lstm(x)[0])[0])


def training_step(model, optimizer, x, y):
    loss = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
    loss.backward()
    optimizer.step()
    return loss


def batch(seed, size):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    return (torch.randn(T, size, FEATURES, device="cuda", generator=gen),
            torch.randint(0, CLASSES, (T, size), device="cuda", generator=gen))


# (use_persistent_kernels, batch, hidden, side streams): forced step-wise; the persistent kernels
# wherever they apply; the default, whose SIMT persistent forward runs at batch 1 from H = 128;
# each with the LSTM's directions concurrent and the GRU's layers pipelined, on side streams that
# the capture forks from its stream and joins back.
SETTINGS = {"step-wise": (False, 8, 32, False), "persistent": (True, 8, 32, False),
            "default at batch 1": (None, 1, 256, False),
            "step-wise, side streams": (False, 8, 32, True),
            "persistent, side streams": (True, 8, 32, True)}


@pytest.fixture(params=list(SETTINGS.values()), ids=list(SETTINGS))
def setting(request):
    enabled, size, hidden, side_streams = request.param
    fused_rnn.use_persistent_kernels(enabled)
    fused_rnn.use_concurrent_directions(side_streams)
    fused_rnn.use_pipelined_layers(side_streams, chunks=3)
    yield size, hidden
    fused_rnn.use_persistent_kernels(None)
    fused_rnn.use_concurrent_directions(False)
    fused_rnn.use_pipelined_layers(False)


def test_a_captured_training_step_replays_the_eager_step(setting):
    size, hidden = setting
    torch.manual_seed(0)
    model = Tagger(hidden).cuda()
    eager = copy.deepcopy(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    eager_optimizer = torch.optim.SGD(eager.parameters(), lr=0.1)
    static_x, static_y = batch(0, size)

    # Warm-up on a side stream, as torch.cuda.graph requires; the eager copy takes the same steps.
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            optimizer.zero_grad(set_to_none=True)
            training_step(model, optimizer, static_x, static_y)
    torch.cuda.current_stream().wait_stream(side)
    for _ in range(3):
        eager_optimizer.zero_grad(set_to_none=True)
        training_step(eager, eager_optimizer, static_x, static_y)

    graph = torch.cuda.CUDAGraph()
    optimizer.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        static_loss = training_step(model, optimizer, static_x, static_y)

    for seed in range(1, 4):
        x, y = batch(seed, size)
        static_x.copy_(x)
        static_y.copy_(y)
        graph.replay()
        eager_optimizer.zero_grad(set_to_none=True)
        eager_loss = training_step(eager, eager_optimizer, x, y)
        torch.testing.assert_close(static_loss, eager_loss)
        for (name, got), want in zip(model.named_parameters(), eager.parameters()):
            torch.testing.assert_close(got, want, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("module", [fused_rnn.LSTM, fused_rnn.GRU])
def test_a_captured_packed_backward_replays_the_eager_one(module):
    """A packed sequence's forward and backward, captured and replayed on new data: the states
    before each step come from per-step copies under capture (no indices from the host, whose
    memory a replay would read after it was freed), the gradients those of eager calls."""
    torch.manual_seed(0)
    layer = module(FEATURES, 24, bidirectional=True).cuda()
    lengths = torch.tensor([T, 7, T, 2, 5, 1])
    order = torch.sort(lengths, descending=True).indices
    sizes = torch.tensor([int((lengths > t).sum()) for t in range(T)])
    static = torch.randn(int(lengths.sum()), FEATURES, device="cuda", requires_grad=True)

    def step(data):
        packed = torch.nn.utils.rnn.PackedSequence(data, sizes, order.cuda(),
                                                   torch.argsort(order).cuda())
        out, _ = layer(packed)
        return torch.autograd.grad(out.data.square().sum(), [data, *layer.parameters()])

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            step(static)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_grads = step(static)
    for seed in range(1, 3):
        data = torch.randn(static.shape, device="cuda", generator=torch.Generator(
            device="cuda").manual_seed(seed))
        with torch.no_grad():
            static.copy_(data)
        graph.replay()
        for got, want in zip(static_grads, step(data.requires_grad_())):
            torch.testing.assert_close(got, want)
