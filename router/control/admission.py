"""Admitting an inference request, in the supervisor's process: find its model (fetching a
preset's files first), wait for a lease on it, and send it into the model's worker. Requests
from every HTTP process come through here, the main process's own in a call, the others' as
messages (router/control/port.py)."""

from __future__ import annotations

import asyncio
import time

from router.control.dispatch import Dispatched
from router.control.sessions import RESEND_PAUSE, Session
from router.control.state import RouterState, model_for_request, with_files
from router.control.table import Lease, Model
from router.messages import Admission
from workers.errors import ApiError
from workers.ring import Ring


def admit_at_once(state: RouterState, admission: Admission, ring: Ring) -> Dispatched | None:
    """A request for a model that is loaded and free: its claim is granted as the supervisor's
    inbox reads it, and it is sent without a task or a turn of the loop. None when it has to
    wait (`admit`)."""
    supervisor = state.supervisor
    model = supervisor.find(admission.model) if admission.model else None
    if model is None or not model.ready:
        return None
    lease = supervisor.granted_now(supervisor.want(model, admission.autoload))
    if lease is None:
        return None
    return state.dispatch.send(lease, admission.route, admission.body, ring)


async def admit(state: RouterState, admission: Admission, ring: Ring) -> Dispatched:
    """The request is in its worker, its answer on the way into `ring`."""
    dispatched = admit_at_once(state, admission, ring)
    if dispatched is not None:
        return dispatched
    model = await _model(state, admission)
    deadline = time.monotonic() + admission.timeout
    while True:
        lease = await _acquire(state, model, admission.autoload, deadline)
        dispatched = state.dispatch.send(lease, admission.route, admission.body, ring)
        if dispatched is not None:
            return dispatched
        await asyncio.sleep(RESEND_PAUSE)  # its worker just went: wait for the next


async def start_session(state: RouterState, admission: Admission) -> Session:
    """A resumable session, once its request is in its worker (its generation goes on
    whatever becomes of the client)."""
    model = await _model(state, admission)
    session = state.streams.start(
        admission.conversation_id, model, admission.route, admission.body, admission.autoload
    )
    await asyncio.shield(session.sent)
    return session


async def _model(state: RouterState, admission: Admission) -> Model:
    name = admission.model
    model = await model_for_request(state, name)
    if model is None and not name:
        raise ApiError(400, "model name is missing from the request")
    if model is None:
        raise ApiError(400, f"model '{name}' not found")
    if admission.autoload:
        model = await with_files(state, model)
    return model


async def _acquire(state: RouterState, model: Model, autoload: bool, deadline: float) -> Lease:
    """The model, loaded and leased; the wait ends at --timeout with a 503."""
    try:
        left = max(0.0, deadline - time.monotonic())
        return await asyncio.wait_for(state.supervisor.acquire(model, autoload), left)
    except TimeoutError as error:
        message = f"model {model.id} was not available within {state.config.timeout:g} s"
        raise ApiError(503, message) from error
