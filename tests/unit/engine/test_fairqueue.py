from engine.fairqueue import FairQueue


def drain(queue):
    return [queue.pop() for _ in range(len(queue))]


def test_one_callers_burst_does_not_starve_the_others():
    queue: FairQueue[str] = FairQueue()
    for i in range(5):
        queue.push("burst", f"b{i}")
    queue.push("alice", "a0")
    queue.push("bob", "c0")
    assert drain(queue) == ["b0", "a0", "c0", "b1", "b2", "b3", "b4"]


def test_requests_of_one_caller_stay_in_order():
    queue: FairQueue[int] = FairQueue()
    for i in range(4):
        queue.push("k", i)
    assert drain(queue) == [0, 1, 2, 3]


def test_removed_item_is_not_served_and_size_follows():
    queue: FairQueue[str] = FairQueue()
    queue.push("a", "x")
    queue.push("b", "y")
    assert queue.remove("x")
    assert not queue.remove("x")
    assert len(queue) == 1
    assert drain(queue) == ["y"]
