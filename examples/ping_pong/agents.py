"""The ping-pong example: a patient (ping) asks, a doctor (pong) answers.

``PongAgent`` keeps a typed state (how many patients it answered) and answers
each ``patient_message`` request with a ``doctor_message`` reply. ``PingAgent``
holds the whole conversation in ``on_start``, prints every reply, reads the
doctor's state through discovery-free messaging, then stops the runtime.
"""

from __future__ import annotations

import msgspec

from mas import Agent, AgentMessage


class PatientMessage(msgspec.Struct):
    """What the patient says."""

    text: str


class DoctorMessage(msgspec.Struct):
    """What the doctor answers."""

    text: str
    answered: int


class PongState(msgspec.Struct):
    """The doctor's persistent state."""

    answered: int = 0


def count_answer(state: PongState) -> None:
    """One more patient answered (run by ``edit_state``, perhaps more than once)."""
    state.answered += 1


class PongAgent(Agent[PongState]):
    """Answers every patient message and counts them in its state."""

    def __init__(self, agent_id: str, **kwargs: object) -> None:
        super().__init__(agent_id, **kwargs)

    @Agent.on("patient_message", model=PatientMessage)
    async def handle_patient(self, message: AgentMessage, payload: PatientMessage) -> None:
        # edit_state, not update_state({"answered": self.state.answered + 1}): concurrent
        # handlers and other instances of this agent never lose each other's counts.
        state = await self.edit_state(count_answer)
        reply = DoctorMessage(
            text=f"Noted ({payload.text!r}). Rest and drink water.", answered=state.answered
        )
        await message.reply("doctor_message", reply)


class PingAgent(Agent[dict[str, object]]):
    """Sends each question as a request, prints the reply, then stops the runtime."""

    def __init__(self, agent_id: str, *, questions: list[str], **kwargs: object) -> None:
        super().__init__(agent_id, **kwargs)
        self.questions = questions

    async def on_start(self) -> None:
        doctors = await self.discover(capabilities=["responder"])
        print(f"ping: found {[d.agent_id for d in doctors]}", flush=True)
        for question in self.questions:
            answer = await self.request(
                "pong", "patient_message", {"text": question}, timeout=10, model=DoctorMessage
            )
            print(f"ping: pong answered #{answer.answered}: {answer.text}", flush=True)
        self.stop_runtime()
