r"""Math in the documentation sites, rendered at build time: LaTeX to MathML, no script, works offline.

``pymdownx.arithmatex`` (generic mode) finds the formulas in a page (``\(...\)``, ``$...$``, ``\[...\]``,
``$$...$$``) and keeps them away from the rest of Markdown; this Python-Markdown extension then replaces each
one with MathML made by the pure-Python ``latex2mathml`` (the ``docs`` extra of paperpack-core). Browsers
render MathML natively (Chromium since version 109, Firefox, Safari), so a page needs no math script and reads
the same offline. A formula ``latex2mathml`` cannot convert stops the build, naming it.

Every site uses it through the core's mkdocs base (``shared/mkdocs.base.yml``)::

    markdown_extensions:
      - pymdownx.arithmatex:
          generic: true
      - paperpack.core.docs

Examples:
    >>> import markdown
    >>> html = markdown.markdown(
    ...     r"The update \(\theta_{t+1} = \theta_t - \eta g_t\).",
    ...     extensions=["pymdownx.arithmatex", "paperpack.core.docs"],
    ...     extension_configs={"pymdownx.arithmatex": {"generic": True}},
    ... )
    >>> "<math" in html and "arithmatex" not in html and "\\(" not in html
    True
"""

from __future__ import annotations

import html
import re
from typing import Any

from markdown import Extension, Markdown
from markdown.postprocessors import Postprocessor

__all__ = ["MathMLExtension", "latex_to_mathml", "makeExtension"]

# What pymdownx.arithmatex writes in generic mode, after the raw-HTML stash is restored.
_INLINE = re.compile(r'<span class="arithmatex">\\\((.*?)\\\)</span>', re.DOTALL)
_BLOCK = re.compile(r'<div class="arithmatex">\\\[(.*?)\\\]</div>', re.DOTALL)


class MathConversionError(ValueError):
    """A formula that latex2mathml cannot convert."""


def latex_to_mathml(latex: str, *, display: bool) -> str:
    r"""Convert one LaTeX formula to a ``<math>`` element.

    Raises:
        MathConversionError: naming the formula, when it cannot be converted.

    Examples:
        >>> from paperpack.core.docs import latex_to_mathml
        >>> latex_to_mathml(r"\frac{1}{k}", display=False)[:40]
        '<math xmlns="http://www.w3.org/1998/Math'
    """
    from latex2mathml.converter import convert

    try:
        return str(convert(latex, display="block" if display else "inline"))
    except Exception as error:  # latex2mathml raises assorted exception types for unknown input
        raise MathConversionError(f"cannot render the formula {latex!r} as MathML: {error!r}") from None


class _MathMLPostprocessor(Postprocessor):
    def run(self, text: str) -> str:
        def inline(match: re.Match[str]) -> str:
            return latex_to_mathml(html.unescape(match.group(1)), display=False)

        def block(match: re.Match[str]) -> str:
            mathml = latex_to_mathml(html.unescape(match.group(1)), display=True)
            return f'<div class="math-block">{mathml}</div>'

        return _INLINE.sub(inline, _BLOCK.sub(block, text))


class MathMLExtension(Extension):
    """Replace ``pymdownx.arithmatex``'s generic output with MathML when the page is written."""

    def extendMarkdown(self, md: Markdown) -> None:  # noqa: N802 (Python-Markdown's name)
        """Register the postprocessor after the raw-HTML stash is restored (priority below 30)."""
        md.postprocessors.register(_MathMLPostprocessor(md), "paperpack_mathml", 5)


def makeExtension(**kwargs: Any) -> MathMLExtension:  # noqa: N802 (Python-Markdown's entry point)
    """The entry point Python-Markdown calls for ``extensions=["paperpack.core.docs"]``."""
    return MathMLExtension(**kwargs)
