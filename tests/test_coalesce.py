import asyncio

import numpy as np
import pytest

from facet.serve.coalesce import Coalescer


class FakeModelService:
    """Answers each image with its own id; records batch sizes and concurrency."""

    def __init__(self, fail_first: bool = False):
        self.sizes: list[int] = []
        self.in_flight = self.most_in_flight = 0
        self.fail_first = fail_first

    async def __call__(self, images: np.ndarray) -> np.ndarray:
        self.sizes.append(len(images))
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        await asyncio.sleep(0.01)
        self.in_flight -= 1
        if self.fail_first and len(self.sizes) == 1:
            raise RuntimeError("model service down")
        return images[:, 0, 0, :1].astype(np.float32)


def _image(i: int, n: int = 1) -> np.ndarray:
    return np.full((n, 2, 2, 3), i, np.uint8)


def test_concurrent_calls_share_model_calls_and_get_their_own_rows():
    async def main():
        service = FakeModelService()
        coalesce = Coalescer(service, max_batch=8, max_in_flight=2)
        out = await asyncio.gather(*(coalesce(_image(i)) for i in range(40)))
        return service, coalesce, out

    service, coalesce, out = asyncio.run(main())
    assert [float(o[0, 0]) for o in out] == list(range(40))
    assert sum(service.sizes) == 40 and len(service.sizes) < 40
    assert max(service.sizes) <= 8 and service.most_in_flight <= 2
    assert coalesce.calls == len(service.sizes)


def test_a_lone_call_goes_out_at_once():
    async def main():
        service = FakeModelService()
        coalesce = Coalescer(service, max_batch=8)
        first = await coalesce(_image(3, n=2))
        return service, first

    service, first = asyncio.run(main())
    assert service.sizes == [2] and first[:, 0].tolist() == [3.0, 3.0]


def test_a_failed_call_fails_its_callers_only():
    async def main():
        service = FakeModelService(fail_first=True)
        coalesce = Coalescer(service, max_batch=4, max_in_flight=1)
        first = await asyncio.gather(*(coalesce(_image(i)) for i in range(3)),
                                     return_exceptions=True)
        later = await coalesce(_image(7))
        return first, later

    first, later = asyncio.run(main())
    # the first call carries image 0 alone (a free slot sends at once); 1 and 2 wait and succeed
    assert isinstance(first[0], RuntimeError)
    assert [float(r[0, 0]) for r in first[1:]] == [1.0, 2.0]
    assert float(later[0, 0]) == 7.0


def test_an_oversized_request_still_goes_out_alone():
    async def main():
        service = FakeModelService()
        coalesce = Coalescer(service, max_batch=4, max_in_flight=1)
        out = await asyncio.gather(coalesce(_image(1)), coalesce(_image(2, n=6)),
                                   coalesce(_image(3)))
        return service, out

    service, out = asyncio.run(main())
    assert service.sizes == [1, 6, 1]
    assert [len(o) for o in out] == [1, 6, 1]


@pytest.mark.parametrize("max_in_flight", [1, 3])
def test_in_flight_limit_holds(max_in_flight):
    async def main():
        service = FakeModelService()
        coalesce = Coalescer(service, max_batch=2, max_in_flight=max_in_flight)
        await asyncio.gather(*(coalesce(_image(i)) for i in range(30)))
        return service

    assert asyncio.run(main()).most_in_flight == max_in_flight
