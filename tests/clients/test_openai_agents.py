"""The OpenAI Agents SDK (`openai-agents`) running an agent with two function tools through
Tandem, with its Responses model (OpenAIResponsesModel, POST /v1/responses) and its chat
completions model (OpenAIChatCompletionsModel). Tracing is disabled: nothing leaves the machine.

The server runs the scripted Hermes model (tests/fixtures/scripted), which answers every turn
with the same reasoning and get_weather call. The agent's tool-use behaviour ends the run
after the second tool result, so a run is: model call -> get_weather -> model call with the
function's output in its input (the round trip) -> get_weather -> final output. Oracles:
scripted.json's parsed call (name and arguments the SDK hands the tool), the SDK's own
bookkeeping of items and usage, and the tool outputs it sent back.
"""
import json

import pytest

agents = pytest.importorskip("agents")
from agents import (Agent, ModelSettings, OpenAIChatCompletionsModel,  # noqa: E402
                    OpenAIResponsesModel, Runner, function_tool, set_tracing_disabled)
from agents.agent import ToolsToFinalOutputResult  # noqa: E402
from openai import AsyncOpenAI  # noqa: E402

from conftest import SCRIPTED  # noqa: E402
from serve_util import ServeProcess  # noqa: E402

DOC = json.loads((SCRIPTED / "scripted.json").read_text())
QUESTION = DOC["question"]
WANT = next(c for m in DOC["models"] if m["file"] == "scripted-hermes.gguf"
            for c in m["cases"] if c["name"] == "think_tools")["parsed"]["tool_calls"][0]


@pytest.fixture(scope="module")
def hermes_srv(tandem_bin):
    set_tracing_disabled(True)
    srv = ServeProcess(SCRIPTED / "scripted-hermes.gguf")
    yield srv
    srv.stop()


def make_agent(model):
    calls = []

    @function_tool
    def get_weather(city: str, days: int = 1) -> str:
        """Get the weather forecast for a city.

        Args:
            city: City name
            days: Number of days
        """
        calls.append(("get_weather", city, days))
        return f"Sunny in {city} for {days} days"

    @function_tool
    def get_time(city: str) -> str:
        """The local time in a city.

        Args:
            city: City name
        """
        calls.append(("get_time", city))
        return "12:00"

    def stop_after_two(ctx, results):
        # final once the model has seen one tool output and called again
        done = len(calls) >= 2
        return ToolsToFinalOutputResult(is_final_output=done,
                                        final_output=results[-1].output if done else None)

    agent = Agent(name="forecaster", instructions="Answer with the tools.", model=model,
                  tools=[get_weather, get_time], tool_use_behavior=stop_after_two,
                  model_settings=ModelSettings(temperature=0.0, max_tokens=64))
    return agent, calls


def check_run(result, calls):
    assert calls == [("get_weather", WANT["arguments"]["city"], WANT["arguments"]["days"])] * 2
    assert result.final_output == "Sunny in Paris for 3 days"
    kinds = [i.type for i in result.new_items]
    assert kinds.count("tool_call_item") == 2 and kinds.count("tool_call_output_item") == 2
    outs = [i.output for i in result.new_items if i.type == "tool_call_output_item"]
    assert outs == ["Sunny in Paris for 3 days"] * 2
    first, second = result.raw_responses
    # the second call carried the first's reasoning, call and output: a longer prompt whose
    # start (the first prompt) came from the prefix cache
    assert second.usage.input_tokens > first.usage.input_tokens
    assert second.usage.input_tokens_details.cached_tokens > 0
    assert first.usage.output_tokens > 0


def client(srv):
    return AsyncOpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def test_agent_responses_model(hermes_srv):
    model = OpenAIResponsesModel(model="scripted-hermes", openai_client=client(hermes_srv))
    agent, calls = make_agent(model)
    result = Runner.run_sync(agent, QUESTION, max_turns=4)
    check_run(result, calls)
    reasoning = [i for i in result.new_items if i.type == "reasoning_item"]
    assert len(reasoning) == 2


def test_agent_chat_completions_model(hermes_srv):
    model = OpenAIChatCompletionsModel(model="scripted-hermes", openai_client=client(hermes_srv))
    agent, calls = make_agent(model)
    result = Runner.run_sync(agent, QUESTION, max_turns=4)
    check_run(result, calls)


def test_agent_streamed(hermes_srv):
    """Runner.run_streamed over the Responses model: the SDK assembles the run from the typed
    events alone."""
    import asyncio

    async def go():
        model = OpenAIResponsesModel(model="scripted-hermes", openai_client=client(hermes_srv))
        agent, calls = make_agent(model)
        run = Runner.run_streamed(agent, QUESTION, max_turns=4)
        kinds = [e.type async for e in run.stream_events()]
        return run, calls, kinds

    run, calls, kinds = asyncio.run(go())
    assert "raw_response_event" in kinds and "run_item_stream_event" in kinds
    check_run(run, calls)
