#!/usr/bin/env python3
"""Generates tests/fixtures/templates/cases.jsonl: deterministic, varied chat-template
render contexts for each fixture template (tests/python/test_templates.py renders each
with Python jinja2 as transformers configures it and with `tandem template --jsonl`, and
compares byte for byte).

Each line: {"template": NAME, "id": "NAME-NNN", "context": {...}}. The context is what a
caller passes to apply_chat_template: messages, tools, add_generation_prompt and extra
keyword arguments (bos_token, eos_token, enable_thinking, reasoning_effort, ...).

Cases cover: with / without a system (or developer) message, multi-turn, tool
definitions with nested JSON schemas, assistant tool calls with arguments as objects and
as JSON strings, single and consecutive tool results, reasoning_content, non-ASCII text
(CJK, emoji, quotes, backslashes, newlines), add_generation_prompt true/false,
enable_thinking true/false, reasoning_effort low/high, and a few contexts the template
rejects (raise_exception, or a type error), which must fail in both engines.

Usage: tools/make_template_cases.py [--out PATH] [--per-template N] [--seed S]
"""
import argparse
import json
import random
from pathlib import Path

# new templates go at the end: each template's cases come from its own seeded generator, so
# the earlier templates' cases stay as they were
TEMPLATES = ["qwen3-coder", "gpt-oss", "minimax-m2", "llama-3.1", "qwen3", "smollm2", "devstral-small-2",
             "mistral-v13", "qwen3-coder-next", "qwen3.5"]

SPECIALS = {
    "qwen3-coder": ("", "<|im_end|>"),
    "qwen3": ("", "<|im_end|>"),
    "gpt-oss": ("<|startoftext|>", "<|return|>"),
    "minimax-m2": ("]~!b[", "[e~["),
    "llama-3.1": ("<|begin_of_text|>", "<|eot_id|>"),
    "smollm2": ("<|im_start|>", "<|im_end|>"),
    "devstral-small-2": ("<s>", "</s>"),
    "mistral-v13": ("<s>", "</s>"),
    "qwen3-coder-next": ("", "<|im_end|>"),
    "qwen3.5": ("", "<|im_end|>"),
}

TEXTS = [
    "Hello!",
    "What is the capital of France?",
    "你好，世界！请用中文回答。",
    "Emoji test 🚀✨🎉 and a flag 🇫🇷",
    'She said "hi" and he said \'bye\'.',
    "Windows path: C:\\Users\\me\\file.txt and a regex \\d+\\s*",
    "line one\nline two\n\nline four after a blank",
    "  leading and trailing spaces  ",
    "tab\tseparated\tvalues",
    "JSON-looking text: {\"a\": [1, 2, 3], \"b\": null}",
    "Ünïcödé àccents, ß, Ωμέγα, Кириллица",
    "日本語のテキストとカタカナ、ひらがな。",
    "Math: 2 < 3 && 5 > 4; 10% off; a|b ~ c",
    "A very long message. " * 12,
    "Trailing newline\n",
    "<think>should stay literal</think> in a user message",
    "",
]

REASONING = [
    "The user wants a short answer. I will be concise.",
    "Let me think step by step:\n1. parse\n2. compute\n3. answer",
    "思考：用户在问天气。",
    "Check the tool output first; it said 22°C.",
]

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the current weather for a location.",
            "parameters": {
                "type": "object",
                "properties": {
                    "location": {"type": "string", "description": "City and country, e.g. Paris, FR"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"], "description": "Temperature unit"},
                },
                "required": ["location"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "search_documents",
            "description": "  Search the document store.\nReturns the best matches.  ",
            "parameters": {
                "type": "object",
                "properties": {
                    "query": {"type": "string", "description": "Free-text query (any language: 検索)"},
                    "max_results": {"type": "integer", "description": "How many results", "default": 5},
                    "filters": {
                        "type": "object",
                        "description": "Optional filters",
                        "properties": {
                            "tags": {"type": "array", "items": {"type": "string"}},
                            "after": {"type": "string", "description": "ISO date"},
                            "score": {"type": "number"},
                        },
                        "required": ["tags"],
                    },
                },
                "required": ["query"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "run_sql",
            "description": "Run a read-only SQL query with \"quotes\" and a \\ backslash.",
            "parameters": {
                "type": "object",
                "properties": {
                    "sql": {"type": "string", "description": "The query"},
                    "params": {
                        "type": "array",
                        "description": "Positional parameters",
                        "items": {"type": "object", "properties": {"value": {"type": "string"}, "nullable": {"type": "boolean"}}},
                    },
                    "timeout_s": {"type": ["number", "null"], "description": "Timeout"},
                    "mode": {"type": "string", "enum": ["fast", "exact"], "default": "fast"},
                },
                "required": ["sql", "params"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "set_flags",
            "description": "Toggle feature flags 🚩.",
            "parameters": {
                "type": "object",
                "properties": {
                    "flags": {"type": "array", "items": {"type": "boolean"}},
                    "ratio": {"type": "number", "description": "A float like 0.5", "default": 0.25},
                    "target": {
                        "oneOf": [{"type": "string", "description": "name"}, {"type": "integer"}],
                        "description": "Target id or name",
                    },
                    "meta-data": {"type": "object", "description": "Key with a dash", "$comment": "x"},
                },
                "required": [],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "no_params",
            "description": "A tool without parameters.",
            "parameters": {"type": "object", "properties": {}},
        },
    },
]

ARGS = {
    "get_weather": [{"location": "Paris, FR"}, {"location": "東京", "unit": "celsius"}],
    "search_documents": [
        {"query": "quarterly report", "max_results": 3},
        {"query": "naïve \"quoted\" query\nsecond line", "filters": {"tags": ["a", "b"], "score": 0.75}},
    ],
    "run_sql": [{"sql": "SELECT * FROM t WHERE x = ?", "params": [{"value": "1"}], "timeout_s": 2.5}],
    "set_flags": [{"flags": [True, False], "ratio": 1.0, "target": 42}, {"flags": [], "target": None}],
    "no_params": [{}],
}

TOOL_RESULTS = [
    '{"temperature": 22, "condition": "sunny"}',
    "No documents found.",
    "Résultat: 3 lignes\n| a | b |\n|---|---|\n| 1 | 2 |",
    '[{"id": 1, "title": "Report Q3"}, {"id": 2, "title": "レポート"}]',
    "ok",
]


class Gen:
    def __init__(self, name, rng):
        self.name = name
        self.rng = rng

    def text(self, allow_empty=True):
        t = self.rng.choice(TEXTS)
        if not allow_empty and t == "":
            t = "Hi"
        return t

    def tools(self):
        k = self.rng.randint(1, 3)
        return self.rng.sample(TOOLS, k)

    def tool_call(self, tools, as_string, idx):
        tool = self.rng.choice(tools)["function"]["name"]
        args = self.rng.choice(ARGS[tool])
        if as_string:
            args = json.dumps(args, ensure_ascii=self.rng.random() < 0.5)
        return {"id": f"call_{idx}", "type": "function", "function": {"name": tool, "arguments": args}}

    def conversation(self, *, tools, string_args, max_calls, reasoning, system_role,
                     content_with_calls):
        """A plausible conversation: optional system, then turns of user / assistant,
        with tool-call loops when tools exist."""
        rng = self.rng
        msgs = []
        if system_role is not None:
            msgs.append({"role": system_role, "content": self.text(allow_empty=False)})
        turns = rng.randint(1, 3)
        call_idx = 0
        for t in range(turns):
            msgs.append({"role": "user", "content": self.text(allow_empty=False)})
            last = t == turns - 1
            if last and rng.random() < 0.5:
                break  # ends on a user message
            if tools and rng.random() < 0.7:
                ncalls = rng.randint(1, max_calls)
                calls = []
                for _ in range(ncalls):
                    call_idx += 1
                    calls.append(self.tool_call(tools, string_args and rng.random() < 0.6, call_idx))
                m = {"role": "assistant", "content": content_with_calls(rng), "tool_calls": calls}
                if reasoning and rng.random() < 0.6:
                    m["reasoning_content"] = rng.choice(REASONING)
                msgs.append(m)
                for c in calls:
                    msgs.append({"role": "tool", "tool_call_id": c["id"], "name": c["function"]["name"],
                                 "content": rng.choice(TOOL_RESULTS)})
                if last and rng.random() < 0.4:
                    break  # ends on tool results
            m = {"role": "assistant", "content": self.text(allow_empty=False)}
            if reasoning and rng.random() < 0.5:
                m["reasoning_content"] = rng.choice(REASONING)
            msgs.append(m)
        return msgs


def base_ctx(name, rng):
    bos, eos = SPECIALS[name]
    ctx = {"bos_token": bos, "eos_token": eos, "add_generation_prompt": rng.random() < 0.6}
    return ctx


def profile_cases(name, rng, n):
    g = Gen(name, rng)
    cases = []
    for i in range(n):
        ctx = base_ctx(name, rng)
        use_tools = rng.random() < 0.6
        tools = g.tools() if use_tools else None
        has_system = rng.random() < 0.5
        if name in ("qwen3-coder", "qwen3-coder-next"):
            msgs = g.conversation(tools=tools, string_args=False, max_calls=2, reasoning=False,
                                  system_role="system" if has_system else None,
                                  content_with_calls=lambda r: r.choice([None, "", "Let me check.", "  padded  "]))
        elif name == "qwen3":
            msgs = g.conversation(tools=tools, string_args=True, max_calls=3, reasoning=True,
                                  system_role="system" if has_system else None,
                                  content_with_calls=lambda r: r.choice(["", "I'll call a tool.", "\nLeading newline"]))
            # reasoning embedded in content, split by the template at </think>
            if rng.random() < 0.3:
                for m in msgs:
                    if m["role"] == "assistant" and "reasoning_content" not in m and m["content"]:
                        m["content"] = "<think>\n" + rng.choice(REASONING) + "\n</think>\n\n" + m["content"]
                        break
            if rng.random() < 0.6:
                ctx["enable_thinking"] = rng.random() < 0.5
        elif name == "qwen3.5":
            msgs = qwen35_conversation(g, rng, tools, has_system, ctx)
        elif name == "gpt-oss":
            role = rng.choice(["system", "developer"]) if has_system else None
            msgs = g.conversation(tools=tools, string_args=True, max_calls=1, reasoning=True,
                                  system_role=role, content_with_calls=lambda r: "")
            if rng.random() < 0.7:
                ctx["reasoning_effort"] = rng.choice(["low", "high"])
            if rng.random() < 0.15:
                ctx["builtin_tools"] = rng.sample(["browser", "python"], rng.randint(1, 2))
            if rng.random() < 0.1:
                ctx["model_identity"] = "You are Tandem, a test model. 🤖"
        elif name == "minimax-m2":
            msgs = g.conversation(tools=tools, string_args=True, max_calls=2, reasoning=True,
                                  system_role="system" if has_system else None,
                                  content_with_calls=lambda r: r.choice(["", "Calling tools now."]))
        elif name == "llama-3.1":
            msgs = g.conversation(tools=tools, string_args=False, max_calls=1, reasoning=False,
                                  system_role="system" if has_system else None,
                                  content_with_calls=lambda r: None)
            if rng.random() < 0.2:
                ctx["date_string"] = "01 Jan 2025"
            if tools and rng.random() < 0.3:
                ctx["tools_in_user_message"] = False
        elif name in ("devstral-small-2", "mistral-v13"):
            # Mistral tokenizer v13: [TOOL_CALLS]NAME[ARGS]{...} per call, no ids; no
            # generation prompt (the answer follows [/INST])
            msgs = g.conversation(tools=tools, string_args=True, max_calls=3, reasoning=False,
                                  system_role="system" if has_system else None,
                                  content_with_calls=lambda r: r.choice(["", "Let me check.", None]))
            if rng.random() < 0.3:
                for m in msgs:
                    if m["role"] == "user" and m["content"]:
                        m["content"] = [{"type": "image_url", "image_url": {"url": "data:,"}},
                                        {"type": "text", "text": m["content"]}]
                        break
        else:  # smollm2: no tools in the template
            tools = None
            msgs = g.conversation(tools=None, string_args=False, max_calls=1, reasoning=False,
                                  system_role="system" if has_system else None,
                                  content_with_calls=lambda r: "")
        ctx["messages"] = msgs
        if tools is not None:
            ctx["tools"] = tools
        cases.append(ctx)
    return cases


MEDIA = [{"type": "image", "image": "data:,"}, {"type": "image_url", "image_url": {"url": "data:,"}},
         {"type": "video", "video": "data:,"}]


def qwen35_conversation(g, rng, tools, has_system, ctx):
    """Qwen3.5 / 3.6: thinking (reasoning_content, or <think> inside the content, shown only
    after the last real user query), content as lists of text and media parts, consecutive
    tool results, enable_thinking and add_vision_id."""
    msgs = g.conversation(tools=tools, string_args=False, max_calls=3, reasoning=True,
                          system_role="system" if has_system else None,
                          content_with_calls=lambda r: r.choice([None, "", "I'll call a tool.",
                                                                 "\nLeading newline\n"]))
    if rng.random() < 0.3:
        for m in msgs:
            if m["role"] == "assistant" and "reasoning_content" not in m and m["content"]:
                m["content"] = rng.choice(["<think>\n", "<think>", "\n\n<think>\n"]) + rng.choice(REASONING) + \
                    "\n</think>\n\n" + m["content"]
                break
    if rng.random() < 0.35:
        for m in msgs:
            if m["role"] == "user" and rng.random() < 0.7:
                parts = [{"type": "text", "text": m["content"]}]
                parts.insert(rng.randint(0, 1), dict(rng.choice(MEDIA)))
                if rng.random() < 0.3:
                    parts.append({"text": " and more"})
                m["content"] = parts
        if rng.random() < 0.5:
            ctx["add_vision_id"] = True
    if rng.random() < 0.2:
        for m in msgs:
            if m["role"] == "tool":
                m["content"] = [{"type": "text", "text": m["content"]}]
                break
    if rng.random() < 0.7:
        ctx["enable_thinking"] = rng.random() < 0.5
    return msgs


def edge_cases(name):
    """Hand-written contexts: rejections, empty lists, unusual values."""
    bos, eos = SPECIALS[name]
    user = {"role": "user", "content": "Hi"}
    call = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": {"location": "Oslo"}}}
    out = []
    out.append({"bos_token": bos, "eos_token": eos, "messages": [user], "add_generation_prompt": True,
                "tools": []})
    out.append({"bos_token": bos, "eos_token": eos,
                "messages": [{"role": "system", "content": "Sys"}, user,
                             {"role": "assistant", "content": "A1"}, {"role": "user", "content": "Q2"}],
                "add_generation_prompt": False})
    if name == "llama-3.1":
        # two tool calls in one message: the template raises
        out.append({"bos_token": bos, "messages": [user, {"role": "assistant", "content": None,
                                                            "tool_calls": [call, call]}]})
        # tools but no user message: raises
        out.append({"bos_token": bos, "messages": [], "tools": [TOOLS[0]]})
        out.append({"bos_token": bos, "messages": [user], "builtin_tools": ["code_interpreter", "brave_search"],
                    "tools": [TOOLS[0]], "add_generation_prompt": True})
        out.append({"bos_token": bos, "messages": [user, {"role": "assistant", "content": None,
                    "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "brave_search",
                                    "arguments": {"query": "x \"y\""}}}]},
                    {"role": "ipython", "content": {"results": [1, 2]}}],
                    "builtin_tools": ["brave_search"]})
    if name == "gpt-oss":
        # a tool message with no preceding tool call: raises
        out.append({"messages": [user, {"role": "tool", "content": "orphan"}]})
        # content and thinking together on a tool-call message: raises
        out.append({"messages": [user, {"role": "assistant", "content": "c", "thinking": "t",
                                        "tool_calls": [call]}]})
        # channel tags in content: raises
        out.append({"messages": [user, {"role": "assistant", "content": "<|channel|>final<|message|>x"}]})
        # last assistant turn without a generation prompt: rendered with <|return|> and CoT
        out.append({"messages": [user, {"role": "assistant", "content": "done", "reasoning_content": "why"}],
                    "add_generation_prompt": False, "reasoning_effort": "high"})
    if name == "minimax-m2":
        out.append({"messages": [user, {"role": "tool", "content": "orphan"}]})
        out.append({"messages": [{"role": "system", "content": [{"type": "text", "text": "Sys "},
                                                                {"type": "image"}, "plain"],
                                  "current_date": "2025-01-02", "current_location": "Lyon"},
                                 {"role": "user", "content": [{"type": "text", "text": "part 1"}, "part 2"]},
                                 {"role": "assistant", "content": "<think>\ninner\n</think>\n\nanswer"}],
                    "add_generation_prompt": True})
        out.append({"messages": [user, {"role": "assistant", "content": "", "tool_calls": [call]},
                                 {"role": "tool", "content": [{"output": "o1"}, {"type": "text", "text": "t2"}]}]})
    if name == "qwen3.5":
        sys_msg = {"role": "system", "content": "S"}
        # no messages; only tool responses as user turns; a system message later; an unknown
        # role; an image in the system message; a number as content: all raise
        out.append({"messages": []})
        out.append({"messages": [{"role": "user", "content": "<tool_response>\nx\n</tool_response>"}]})
        out.append({"messages": [user, sys_msg]})
        out.append({"messages": [user, {"role": "critic", "content": "x"}]})
        out.append({"messages": [{"role": "system", "content": [{"type": "image"}]}, user]})
        out.append({"messages": [{"role": "user", "content": 42}]})
        out.append({"messages": [{"role": "user", "content": [{"type": "audio"}]}]})
        # string arguments cannot be iterated with |items: a type error in both engines
        out.append({"messages": [user, {"role": "assistant", "content": "",
                                        "tool_calls": [{"type": "function", "function": {
                                            "name": "f", "arguments": "{\"a\": 1}"}}]}]})
        # a system message with tools, arguments of every JSON type, a tool call without a
        # function wrapper, a multi-step tool loop after the last query (thinking shown)
        out.append({"messages": [sys_msg, user,
                                 {"role": "assistant", "content": "", "reasoning_content": "  plan  ",
                                  "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": {
                                      "s": "str", "i": 3, "f": 2.5, "b": False, "n": None, "l": [1, "x"],
                                      "d": {"k": [True]}}}}, {"name": "g", "arguments": {}}]},
                                 {"role": "tool", "content": "r1"}, {"role": "tool", "content": "r2"},
                                 {"role": "assistant", "content": "<think>\nmore\n</think>\n\ndone"}],
                    "tools": [TOOLS[0], TOOLS[3]], "add_generation_prompt": True})
        # a whitespace-only system message with tools, enable_thinking false
        out.append({"messages": [{"role": "system", "content": "  \n "}, user], "tools": [TOOLS[4]],
                    "add_generation_prompt": True, "enable_thinking": False})
    if name == "qwen3-coder-next":
        # string arguments: a type error in both engines; content None on a plain assistant
        # message: str + None fails in both
        out.append({"messages": [user, {"role": "assistant", "content": "",
                                        "tool_calls": [{"type": "function", "function": {
                                            "name": "f", "arguments": "{\"a\": 1}"}}]}]})
        out.append({"messages": [user, {"role": "assistant", "content": None}]})
        # extra keys on tools and parameters (rendered as <key> tags), a tool without a
        # description or parameters, a system message with no tools, an unknown role
        out.append({"messages": [{"role": "system", "content": "S"}, user,
                                 {"role": "custom_role", "content": "other"}],
                    "tools": [{"name": "bare_tool",
                               "parameters": {"type": "object", "properties": {
                                   "x": {"type": "integer", "minimum": 0, "maximum": 10, "items": [1, 2],
                                         "nested": {"k": "v"}, "nothing": None, "flag": True,
                                         "required": ["a", 1]}},
                                   "required": ["x"], "additionalProperties": False},
                               "return": {"type": "string"}, "strict": True},
                              {"type": "function", "function": {"name": "no_desc"}}]})
        out.append({"messages": [{"role": "system", "content": "Only a system prompt"}, user],
                    "add_generation_prompt": True})
    if name == "qwen3-coder":
        # string arguments cannot be iterated with |items: a type error in both engines
        out.append({"messages": [user, {"role": "assistant", "content": "",
                                        "tool_calls": [{"type": "function", "function": {
                                            "name": "f", "arguments": "{\"a\": 1}"}}]}]})
        out.append({"messages": [{"role": "system", "content": "S"}, user,
                                 {"role": "custom_role", "content": "other"}],
                    "tools": [{"name": "bare_tool", "description": "no function wrapper",
                               "parameters": {"type": "object", "properties": {
                                   "x": {"type": "integer", "minimum": 0, "maximum": 10, "items": [1, 2],
                                         "nested": {"k": "v"}, "nothing": None, "flag": True,
                                         "required": ["a", 1]}},
                                   "required": ["x"]},
                               "return": {"type": "string"}}]})
        out.append({"messages": []})
    if name == "qwen3":
        out.append({"messages": [user, {"role": "assistant", "content": None}]})
        out.append({"messages": [{"role": "user", "content": "<tool_response>\nx\n</tool_response>"},
                                 {"role": "assistant", "content": "a", "reasoning_content": "r"}],
                    "add_generation_prompt": True, "enable_thinking": False})
        out.append({"messages": [{"role": "system", "content": "S1"}, user, {"role": "system", "content": "S2"}],
                    "tools": [TOOLS[4]]})
    if name in ("devstral-small-2", "mistral-v13"):
        # an assistant message with neither content nor tool calls: raises
        out.append({"bos_token": bos, "eos_token": eos, "messages": [user, {"role": "assistant", "content": ""}]})
        # an unknown role: raises
        out.append({"bos_token": bos, "eos_token": eos, "messages": [user, {"role": "custom", "content": "x"}]})
        # empty string arguments become {}, a list system prompt, an image in a user message
        out.append({"bos_token": bos, "eos_token": eos,
                    "messages": [{"role": "system", "content": [{"type": "text", "text": "Sys"}]},
                                 {"role": "user", "content": [{"type": "text", "text": "look"},
                                                              {"type": "image"}]},
                                 {"role": "assistant", "content": None, "tool_calls": [
                                     {"id": "c1", "type": "function", "function": {"name": "list_files",
                                                                                   "arguments": ""}}]},
                                 {"role": "tool", "tool_call_id": "c1", "content": "a.txt"}],
                    "tools": [TOOLS[0]]})
        # a system message after the first, and an assistant turn ending the conversation
        out.append({"bos_token": bos, "eos_token": eos,
                    "messages": [user, {"role": "assistant", "content": "A"},
                                 {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q2"},
                                 {"role": "assistant", "content": "B"}]})
    if name == "smollm2":
        out.append({"messages": [{"role": "system", "content": "Custom system"}, user], "add_generation_prompt": True})
        out.append({"messages": [user, {"role": "assistant", "content": None}]})
        out.append({"messages": []})
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "tests/fixtures/templates/cases.jsonl"))
    ap.add_argument("--per-template", type=int, default=40)
    ap.add_argument("--seed", type=int, default=20251123)
    a = ap.parse_args()
    lines = []
    for ti, name in enumerate(TEMPLATES):
        rng = random.Random(a.seed * 31 + ti)
        ctxs = profile_cases(name, rng, a.per_template) + edge_cases(name)
        for i, ctx in enumerate(ctxs):
            lines.append(json.dumps({"template": name, "id": f"{name}-{i:03d}", "context": ctx},
                                    ensure_ascii=False, sort_keys=False))
    Path(a.out).write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {len(lines)} cases to {a.out}")


if __name__ == "__main__":
    main()
