"""Calls from the HTTP front to the model service: inference sent again while a lost call can
still be answered in time, other calls bounded by the same deadline; an unreachable or
overloaded model service is a 503 the client may retry."""
from __future__ import annotations

import asyncio

import aiohttp
import numpy as np
from bentoml.exceptions import BentoMLException, ServiceUnavailable

from .config import INFER_DEADLINE_S
from .http_errors import HTTPError, log, unavailable


async def reachable(call):
    """A model-service call other than inference: unreachable is a 503, as for inference."""
    try:
        async with asyncio.timeout(INFER_DEADLINE_S):
            return await call
    except (aiohttp.ClientError, BentoMLException, TimeoutError) as exc:
        log.warning("model service not reachable: %s", type(exc).__name__)
        raise unavailable("the model service is unavailable") from None


async def infer(model, images: np.ndarray, deadline_s: float = INFER_DEADLINE_S) -> np.ndarray:
    """Run the model service (``model``: its async client). A call can still be lost (a model
    worker restarting, a dropped connection); inference is idempotent, so a lost call is sent
    again until the deadline. A model service that refuses work (its own 503: more queued than
    it can answer in time) is not retried: the client gets a 503 with Retry-After."""
    loop = asyncio.get_running_loop()
    deadline, attempt = loop.time() + deadline_s, 0
    while True:
        attempt += 1
        try:
            async with asyncio.timeout_at(deadline):
                return await model.infer(images)
        except ServiceUnavailable:
            raise unavailable("the model service is at capacity") from None
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
            log.warning("model service call failed (%s), attempt %d", type(exc).__name__, attempt)
            if loop.time() >= deadline - 0.05:
                raise unavailable("the model service is unavailable") from None
            await asyncio.sleep(min(0.05 * attempt, 0.5))
        except TimeoutError:
            raise unavailable(f"no answer from the model service within {deadline_s:g} s"
                              ) from None
        except BentoMLException as exc:
            log.error("model service error: %s", exc)
            raise HTTPError(500, "the model service failed on this request") from None
