"""The model's batch size, chosen at run time by timing calls (score.BatchSizer),
driven here by cost models of a call: fixed cost a plus b per instance."""
from tf_batch_predict.transforms.model.score import BatchSizer, CALLS_PER_STEP, MAX_FEED_BYTES, START_BATCH_SIZE


def settle(sizer, cost, calls=200):
  """Feeds the sizer `calls` full-size calls timed by cost(size); the sizes used."""
  sizes = []
  for _ in range(calls):
    sizes.append(sizer.size)
    sizer.observe(sizer.size, cost(sizer.size))
  return sizes


def test_a_model_of_mostly_fixed_cost_climbs_to_the_largest_batch():
  sizer = BatchSizer(4096)
  # The tabular benchmark model's shape here: 2.8 us per instance at 256,
  # 0.65 at 4096.
  sizes = settle(sizer, lambda n: 560e-6 + 0.5e-6 * n)
  assert sizes[0] == START_BATCH_SIZE and sizer.size == 4096
  assert sizes[:CALLS_PER_STEP] == [START_BATCH_SIZE] * CALLS_PER_STEP


def test_a_compute_bound_model_stays_where_doubling_stops_paying():
  sizer = BatchSizer(4096)
  # Fixed cost 1 ms, 1 ms per instance: per instance at 256 is within 0.4%
  # of at 512: doubling does not pay, the sizer stays at 256.
  settle(sizer, lambda n: 1e-3 + 1e-3 * n)
  assert sizer.size == START_BATCH_SIZE


def test_settles_between_the_extremes():
  sizer = BatchSizer(4096)
  # Per instance a/n + b: doubling n costs at most 0.9 of it while
  # n <= 4a/b = 800: 256 -> 512 -> 1024 pay, 1024 -> 2048 does not.
  a, b = 2e-3, 10e-6
  settle(sizer, lambda n: a + b * n)
  assert sizer.size == 1024


def test_bounded_by_max_batch_size_and_by_memory():
  sizer = BatchSizer(100)
  assert sizer.size == 100
  settle(sizer, lambda n: 1e-3)
  assert sizer.size == 100
  sizer = BatchSizer(4096)
  sizer.bound_by_memory(MAX_FEED_BYTES // 40)  # 40 instances fit: the batch is at most 32
  assert sizer.size == 32 and sizer.max_size == 32
  settle(sizer, lambda n: 1e-3)
  assert sizer.size == 32


def test_partial_and_slow_calls():
  sizer = BatchSizer(4096)
  for _ in range(10):
    sizer.observe(17, 1e-3)  # a chunk's last, partial call: not timed
  assert sizer.size == START_BATCH_SIZE
  settle(sizer, lambda n: 5.0)  # calls of 5 s: no doubling past them
  assert sizer.size == START_BATCH_SIZE


def test_a_settled_size_tries_the_next_again_later():
  sizer = BatchSizer(4096)
  costs = {'slope': 1e-3}
  settle(sizer, lambda n: 1e-3 + costs['slope'] * n)
  assert sizer.size == START_BATCH_SIZE
  costs['slope'] = 1e-9  # now nearly all fixed cost (say, a GPU warmed up)
  settle(sizer, lambda n: 1e-3 + costs['slope'] * n, calls=3000)
  assert sizer.size == 4096


def test_a_size_lost_by_chance_is_won_back_against_recent_calls():
  """Under load, the next size can lose its first calls by chance: tried
  again after REPROBE_CALLS, it is judged against the settled size's last
  calls, not the luckiest of all of them."""
  from tf_batch_predict.transforms.model.score import REPROBE_CALLS
  sizer = BatchSizer(2048)
  state = {'loaded': True, 'lucky': False}

  def cost(n):
    if n < 1024:
      return 1e-3  # all fixed cost: doubling pays up to 1024
    if n == 1024:  # 0.7 us an instance; once 0.35 (a lucky call)
      lucky, state['lucky'] = state['lucky'], False
      return (0.35e-6 if lucky else 0.7e-6) * n
    return (1.0e-6 if state['loaded'] else 0.6e-6) * n  # 2048: slow at first, by chance

  settle(sizer, cost, calls=60)
  assert sizer.size == 1024  # 2048 lost its first calls
  state['lucky'] = True
  settle(sizer, cost, calls=REPROBE_CALLS // 2)
  state['loaded'] = False
  # 0.6 beats 0.9 of the last calls at 1024 (0.7), not 0.9 of the lucky one.
  settle(sizer, cost, calls=2 * REPROBE_CALLS)
  assert sizer.size == 2048
