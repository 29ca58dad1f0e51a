"""Chat templates: compile and render a model's Jinja template the way transformers does.

Templates run in transformers' sandboxed Jinja environment, with its extras
(``raise_exception``, ``strftime_now``, a ``tojson`` that does not escape HTML,
the ``{% generation %}`` tag). Whatever a template raises becomes a one-line
`ChatTemplateError`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any


class ChatTemplateError(ValueError):
    """A chat template refused a conversation (``raise_exception``) or failed to render."""


class _TemplateRaised(Exception):
    """What a template's ``raise_exception(message)`` raises."""


def one_line(text: object) -> str:
    # Template messages may span lines; command-line errors are one line.
    return " ".join(str(text).split())


@lru_cache(maxsize=16)
def compile_chat_template(template: str):
    """A chat template compiled in the sandboxed Jinja environment transformers uses.

    Raises:
        ChatTemplateError: the template is not valid Jinja.
    """
    try:
        import jinja2
        import jinja2.ext
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError as error:
        raise ImportError("apply_chat_template needs jinja2; install it with `pip install jinja2`") from error

    class GenerationTag(jinja2.ext.Extension):
        # transformers' {% generation %} marks assistant text for training masks; here it renders as is.
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_render_body"), [], [], body).set_lineno(lineno)

        def _render_body(self, caller):
            return caller()

    def raise_exception(message: str):
        raise _TemplateRaised(message)

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        # Jinja's own tojson escapes HTML characters, which would change the prompt text.
        return json.dumps(
            value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    def strftime_now(format: str) -> str:
        return datetime.now().strftime(format)

    environment = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[GenerationTag, jinja2.ext.loopcontrols]
    )
    environment.filters["tojson"] = tojson
    environment.globals["raise_exception"] = raise_exception
    environment.globals["strftime_now"] = strftime_now
    try:
        return environment.from_string(template)
    except jinja2.TemplateSyntaxError as error:
        raise ChatTemplateError(
            f"the chat template is not valid Jinja (line {error.lineno}: {one_line(error.message)})"
        ) from None


def select_chat_template(
    templates: str | dict[str, str] | None, chat_template: str | None, tools: list | None, folder: Path | None
) -> str:
    """The template to render: the one named or passed, the tool-use one when tools are given, or the default.

    Args:
        templates: The model's template, or ``{name: template}``, or ``None``.
        chat_template: A template, or the name of one of the model's templates.
        tools: Tool schemas, if any (selects a ``tool_use`` template).
        folder: Where the tokenizer came from, for messages.
    """
    if isinstance(templates, dict):
        if chat_template is not None:
            return templates.get(chat_template, chat_template)
        if tools is not None and "tool_use" in templates:
            return templates["tool_use"]
        if "default" in templates:
            return templates["default"]
        raise ValueError(
            f"the model has several chat templates ({sorted(templates)}) and none is 'default'; "
            "pass chat_template=<name>"
        )
    if chat_template is not None:
        return chat_template
    if templates is None:
        where = f" in {folder}" if folder is not None else ""
        raise ValueError(
            f"the model has no chat template (no chat_template in tokenizer_config.json and no "
            f"chat_template.jinja{where}); pass chat_template=<jinja string>"
        )
    return templates


def render_chat_template(
    template: str,
    messages: Sequence[dict[str, Any]],
    add_generation_prompt: bool,
    tools: list[dict] | None,
    documents: list[dict] | None,
    variables: dict[str, Any],
) -> str:
    """The prompt text a template writes for a conversation.

    Args:
        template: The Jinja template.
        messages: ``[{"role": "user", "content": "..."}, ...]``.
        add_generation_prompt: End with the header that starts an assistant turn.
        tools: JSON schemas of tools, for templates that support them.
        documents: Documents for retrieval-augmented templates.
        variables: Further template variables (special tokens, the caller's extras).

    Raises:
        ChatTemplateError: the template refused the conversation or failed to render.
    """
    # Like transformers, keys set to None are dropped: templates test presence, not None.
    conversation = [{key: value for key, value in message.items() if value is not None} for message in messages]
    compiled = compile_chat_template(template)
    import jinja2

    try:
        return compiled.render(
            messages=conversation,
            tools=tools,
            documents=documents,
            add_generation_prompt=add_generation_prompt,
            **variables,
        )
    except _TemplateRaised as error:  # the template's own raise_exception(message)
        raise ChatTemplateError(f"the chat template refused the conversation: {one_line(error)}") from None
    # Whatever else a template's expressions raise (undefined names, sandbox refusals,
    # Python errors from filters) is a template that cannot render this conversation.
    except (jinja2.TemplateError, TypeError, KeyError, IndexError, AttributeError, ValueError,
            ZeroDivisionError) as error:
        raise ChatTemplateError(
            f"the chat template failed to render: {type(error).__name__}: {one_line(error)}"
        ) from None
