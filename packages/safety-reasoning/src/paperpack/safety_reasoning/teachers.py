"""Teachers: any callable ``list[str] -> list[str]``, one answer per prompt, in order.

:func:`synthesize` sends each teacher prompt (the guidelines and one query) ``k`` times and reads one answer
per copy, so a teacher that samples gives ``k`` different candidates. Two teachers come with the package:

- :class:`TransformersTeacher`: a local transformers causal LM, batched through the core's
  :func:`paperpack.core.hf.sample_completions` (left-padded batches, seeded sampling), with the prefix every
  teacher prompt shares (the template's opening and the guidelines) run through the model once per call.
- :class:`OpenAITeacher`: any OpenAI-compatible chat-completions endpoint (a local vLLM or llama.cpp server,
  or a hosted API) over HTTP with the standard library, ``concurrency`` requests at a time, retried with
  exponential back-off on 408, 429, 5xx, connection errors and time-outs; other 4xx fail at once with the
  server's message. The key comes from ``api_key`` or the environment and is never logged or shown.
"""

from __future__ import annotations

import http.client
import json
import logging
import math
import os
import random
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import CancelledError, ThreadPoolExecutor, as_completed
from typing import TYPE_CHECKING, Any

from paperpack.core.errors import ConfigError, PaperpackError
from paperpack.core.validation import check_int, check_number

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["OpenAITeacher", "Teacher", "TeacherError", "TransformersTeacher", "check_answers"]

logger = logging.getLogger(__name__)

#: A teacher: one answer (a string) per prompt, in order.
Teacher = Callable[[list[str]], list[str]]


class TeacherError(PaperpackError, RuntimeError):
    """A teacher could not answer: an endpoint refused a request, or kept failing after its retries.

    Attributes:
        answers: the answers received before the failure, one slot per prompt of the call (None where none
            came), so that :func:`synthesize` keeps them.
    """

    def __init__(self, message: str, *, answers: Sequence[str | None] = ()) -> None:
        super().__init__(message)
        self.answers: list[str | None] = list(answers)


def check_answers(answers: object, prompts: Sequence[str]) -> list[str]:
    """Check that a teacher returned one string per prompt.

    Raises:
        ConfigError: naming what came back instead (not a list, the wrong count, an answer that is not text).
    """
    if isinstance(answers, str) or not isinstance(answers, Sequence):
        raise ConfigError(
            f"a teacher must return a list of strings, one per prompt; got {type(answers).__name__}"
        )
    if len(answers) != len(prompts):
        raise ConfigError(
            f"the teacher returned {len(answers)} answers for {len(prompts)} prompts; a teacher returns one "
            "string per prompt, in order"
        )
    for position, answer in enumerate(answers):
        if not isinstance(answer, str):
            raise ConfigError(
                f"the teacher's answer {position} is {type(answer).__name__} ({answer!r:.60}), not text; a "
                "teacher returns one string per prompt"
            )
    return list(answers)


def _check_prompts(prompts: object) -> list[str]:
    if isinstance(prompts, str) or not isinstance(prompts, Sequence):
        raise ConfigError(f"`prompts` must be a list of strings, got {type(prompts).__name__}")
    for position, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise ConfigError(f"prompt {position} must be a string, got {type(prompt).__name__}")
    return list(prompts)


# Seeds of successive calls are this far apart, so their per-batch seeds (seed + batch number) never meet.
_CALL_STRIDE = 1_000_003


class TransformersTeacher:
    """A local transformers causal LM as a teacher, generating in batches.

    Each prompt is sent as one user turn of the tokenizer's chat template (``chat=True``) and answered with
    one sampled completion. Successive calls use successive seeds, so asking again gives new samples; a run
    is reproducible from the same ``seed`` and the same sequence of calls.

    Every teacher prompt of :func:`synthesize` starts with the same text (the template's opening and the
    guidelines: about 670 of the 780 tokens of the default prompt). With ``share_prefix`` (on by default;
    ours) the tokens all prompts of a call share go through the model once per call, and every batch starts
    from a copy of their key-value cache (:func:`paperpack.core.hf.sample_completions`); the answers are the
    ones generated without it, up to floating-point rounding (tested token for token, greedy and seeded
    sampling, on Llama and Qwen2).

    Args:
        model: the teacher model.
        tokenizer: its tokenizer; a pad token is added (the end-of-sequence token) when it has none.
        max_new_tokens: the length limit of an answer.
        temperature: sampling temperature.
        top_p: nucleus sampling mass.
        do_sample: False for greedy decoding (every candidate of a query is then the same).
        batch_size: prompts per ``generate`` call.
        chat: wrap each prompt with the chat template.
        seed: the first call's sampling seed.
        progress: show a progress bar per call.
        share_prefix: compute the key-value cache of the prompts' shared prefix once per call (ours; see
            above).

    Examples:
        >>> from paperpack.core.hf import tiny_causal_lm
        >>> from paperpack.safety_reasoning import TransformersTeacher
        >>> teacher = TransformersTeacher(*tiny_causal_lm(), max_new_tokens=4)
        >>> len(teacher(["one prompt", "another"]))
        2
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        max_new_tokens: int = 512,
        temperature: float = 0.7,
        top_p: float = 1.0,
        do_sample: bool = True,
        batch_size: int = 8,
        chat: bool = True,
        seed: int = 0,
        progress: bool = False,
        share_prefix: bool = True,
    ) -> None:
        from paperpack.core.data import ensure_pad_token
        from paperpack.core.validation import check_bool

        check_int("max_new_tokens", max_new_tokens, minimum=1)
        check_number("temperature", temperature, greater_than=0)
        check_number("top_p", top_p, greater_than=0, maximum=1)
        check_int("batch_size", batch_size, minimum=1)
        check_int("seed", seed, minimum=0)
        check_bool("share_prefix", share_prefix)
        if chat and not getattr(tokenizer, "chat_template", None):
            raise ConfigError(
                "the tokenizer has no chat template; pass chat=False to send prompts as plain text"
            )
        ensure_pad_token(tokenizer)
        self.model, self.tokenizer = model, tokenizer
        self.max_new_tokens, self.temperature, self.top_p = max_new_tokens, temperature, top_p
        self.do_sample, self.batch_size, self.chat = do_sample, batch_size, chat
        self.seed, self.progress, self.share_prefix = seed, progress, share_prefix
        self._calls = 0

    def __call__(self, prompts: list[str]) -> list[str]:
        """One sampled answer per prompt."""
        from paperpack.core.hf import sample_completions

        prompts = _check_prompts(prompts)
        if not prompts:
            return []
        seed = self.seed + self._calls * _CALL_STRIDE
        self._calls += 1
        samples = sample_completions(
            self.model,
            self.tokenizer,
            prompts,
            num_samples=1,
            max_new_tokens=self.max_new_tokens,
            batch_size=self.batch_size,
            temperature=self.temperature,
            top_p=self.top_p,
            do_sample=self.do_sample,
            seed=seed,
            chat=self.chat,
            progress=self.progress,
            share_prefix=self.share_prefix,
        )
        return [completions[0].text for completions in samples]

    def __repr__(self) -> str:
        return (
            f"TransformersTeacher({type(self.model).__name__}, batch_size={self.batch_size}, "
            f"share_prefix={self.share_prefix})"
        )


_RETRIED_STATUS = frozenset({408, 429})
_HINTS = {
    401: "check the API key (`api_key` or the environment variable `{env}`)",
    403: "the key may lack access to this model",
    404: "check `base_url` (it usually ends in /v1) and the model name",
}


class OpenAITeacher:
    """An OpenAI-compatible chat-completions endpoint as a teacher, ``concurrency`` requests at a time.

    Each prompt is one user message (after ``system_prompt``, when given), posted to
    ``{base_url}/chat/completions``; the answer is ``choices[0].message.content``.

    Args:
        base_url: the API root, e.g. ``http://localhost:8000/v1`` (vLLM) or ``https://api.openai.com/v1``.
        model: the model name the endpoint serves.
        api_key: the key; None reads the environment variable ``api_key_env`` (and sends no key when it is
            unset, as a local server needs none). Never logged, never in an error message or ``repr``.
        api_key_env: the environment variable that holds the key.
        timeout: seconds a request may wait on the network at each step (connecting, each read).
        max_retries: retries of a request after a retryable failure (408, 429, 5xx, connection error,
            time-out); 0 tries once.
        concurrency: requests in flight at once.
        temperature: sampling temperature.
        max_tokens: the length limit of an answer.
        system_prompt: a system message sent before each prompt.
        backoff: the first retry's delay in seconds; each retry doubles it, up to ``max_backoff``; the delay
            is drawn uniformly from [d/2, d] (jitter). A ``Retry-After`` header in seconds is obeyed instead,
            up to ``max_backoff``.
        max_backoff: the longest delay between tries.
        extra_body: more fields of the request body (``top_p``, ``seed``, ...).

    Raises:
        ConfigError: for a bad argument.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        timeout: float = 60.0,
        max_retries: int = 5,
        concurrency: int = 8,
        temperature: float = 0.7,
        max_tokens: int = 1024,
        system_prompt: str | None = None,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
        extra_body: dict[str, Any] | None = None,
    ) -> None:
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"`base_url` must be an http:// or https:// URL, got {base_url!r}")
        if not isinstance(model, str) or not model.strip():
            raise ConfigError(f"`model` must name the model the endpoint serves, got {model!r}")
        if api_key is not None and (not isinstance(api_key, str) or not api_key):
            raise ConfigError("`api_key` must be a non-empty string or None")
        check_number("timeout", timeout, greater_than=0)
        check_int("max_retries", max_retries, minimum=0)
        check_int("concurrency", concurrency, minimum=1)
        check_number("temperature", temperature, minimum=0)
        check_int("max_tokens", max_tokens, minimum=1)
        check_number("backoff", backoff, minimum=0)
        check_number("max_backoff", max_backoff, minimum=backoff)
        if extra_body is not None and not isinstance(extra_body, dict):
            raise ConfigError(f"`extra_body` must be a dict, got {type(extra_body).__name__}")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key_env = api_key_env
        self._api_key = api_key if api_key is not None else os.environ.get(api_key_env) or None
        self.timeout, self.max_retries, self.concurrency = float(timeout), max_retries, concurrency
        self.temperature, self.max_tokens, self.system_prompt = temperature, max_tokens, system_prompt
        self.backoff, self.max_backoff = float(backoff), float(max_backoff)
        self.extra_body = dict(extra_body or {})
        self._random = random.Random()
        # The environment's proxies apply, as for any HTTP client; no redirect is followed with the key.
        self._opener = urllib.request.build_opener(_NoRedirect())

    def __repr__(self) -> str:
        key = "set" if self._api_key else "none"
        return f"OpenAITeacher({self.url!r}, model={self.model!r}, key={key}, concurrency={self.concurrency})"

    def __call__(self, prompts: list[str]) -> list[str]:
        """One answer per prompt; ``concurrency`` requests in flight.

        Raises:
            TeacherError: when a request fails for good; its ``answers`` hold what was received.
        """
        prompts = _check_prompts(prompts)
        answers: list[str | None] = [None] * len(prompts)
        failure: TeacherError | None = None
        with ThreadPoolExecutor(max_workers=max(1, min(self.concurrency, len(prompts)))) as pool:
            futures = {pool.submit(self.complete, prompt): index for index, prompt in enumerate(prompts)}
            for future in as_completed(futures):
                try:
                    answers[futures[future]] = future.result()
                except CancelledError:
                    continue
                except TeacherError as error:
                    if failure is None:
                        failure = error
                        for pending in futures:
                            pending.cancel()
        if failure is not None:
            kept = sum(answer is not None for answer in answers)
            raise TeacherError(f"{failure} ({kept} of {len(prompts)} answers received)", answers=answers)
        return [answer for answer in answers if answer is not None]

    def complete(self, prompt: str) -> str:
        """Ask the endpoint for one answer, retrying as the class docs say.

        Raises:
            TeacherError: for a non-retryable refusal (4xx), a malformed response, or when every try failed.
        """
        messages = [{"role": "user", "content": prompt}]
        if self.system_prompt is not None:
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        body = {
            **self.extra_body,
            "model": self.model,
            "messages": messages,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }
        data = json.dumps(body).encode("utf-8")
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        last = ""
        for attempt in range(self.max_retries + 1):
            retry_after: float | None = None
            request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
            try:
                with self._opener.open(request, timeout=self.timeout) as response:
                    payload = response.read()
                return self._content(payload)
            except urllib.error.HTTPError as error:
                detail = self._redact(_error_detail(error))
                if error.code not in _RETRIED_STATUS and error.code < 500:
                    hint = _HINTS.get(error.code, "the request was refused; fix it before retrying").format(
                        env=self.api_key_env
                    )
                    raise TeacherError(f"{self.url} answered HTTP {error.code} ({detail}); {hint}") from None
                last = f"HTTP {error.code} ({detail})"
                retry_after = _seconds(error.headers.get("Retry-After") if error.headers else None)
            except TimeoutError:
                last = f"no answer within timeout={self.timeout:g} s"
            except urllib.error.URLError as error:
                reason = error.reason
                last = (
                    f"no answer within timeout={self.timeout:g} s"
                    if isinstance(reason, TimeoutError)
                    else f"connection failed ({self._redact(str(reason))})"
                )
            except (ConnectionError, http.client.HTTPException) as error:
                last = f"connection failed ({type(error).__name__}: {self._redact(str(error))})"
            if attempt < self.max_retries:
                delay = self._delay(attempt, retry_after)
                logger.info(
                    "%s: %s; retry %d of %d in %.2f s", self.url, last, attempt + 1, self.max_retries, delay
                )
                time.sleep(delay)
        raise TeacherError(f"{self.url} failed {self.max_retries + 1} time(s); last: {last}")

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.max_backoff)
        ceiling = min(self.max_backoff, self.backoff * 2**attempt)
        return self._random.uniform(ceiling / 2, ceiling)

    def _content(self, payload: bytes) -> str:
        try:
            content = json.loads(payload)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            content = None
        if not isinstance(content, str):
            shown = self._redact(payload[:200].decode("utf-8", "replace"))
            raise TeacherError(f"{self.url} sent no choices[0].message.content: {shown!r}")
        return content

    def _redact(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key else text


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Refuse redirects: a request carrying the key is never re-sent elsewhere."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _error_detail(error: urllib.error.HTTPError) -> str:
    try:
        raw = error.read()
    except (OSError, http.client.HTTPException):
        raw = b""
    text = raw.decode("utf-8", "replace").strip()
    try:
        parsed = json.loads(text)
        message = parsed.get("error", parsed) if isinstance(parsed, dict) else parsed
        if isinstance(message, dict):
            message = message.get("message", message)
        text = str(message)
    except ValueError:
        pass
    return (text or str(error.reason))[:300]


def _seconds(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None
