// Markdown for model output: `marked` to HTML, then DOMPurify with a short allow-list.
//
// Two layers on purpose. Raw HTML in the model's text is shown as text (a model that writes `<b>`
// or `<script>` is quoting, not formatting), so the renderer never emits tags the model wrote; and
// DOMPurify still cleans what the renderer produced, which catches `javascript:` links and anything a
// future marked version lets through. Images become links: a model's output must not make the
// browser fetch a URL by being displayed.

import DOMPurify from "dompurify";
import { Marked, type Tokens } from "marked";

const ALLOWED_TAGS = [
  "a",
  "b",
  "blockquote",
  "br",
  "code",
  "del",
  "em",
  "h1",
  "h2",
  "h3",
  "h4",
  "h5",
  "h6",
  "hr",
  "i",
  "li",
  "ol",
  "p",
  "pre",
  "span",
  "strong",
  "table",
  "tbody",
  "td",
  "th",
  "thead",
  "tr",
  "ul",
];
const ALLOWED_ATTR = ["href", "title", "class", "align", "start"];
const SAFE_URL = /^(?:https?:|mailto:|#)/i;

function escapeHtml(text: string): string {
  return text
    .replaceAll("&", "&amp;")
    .replaceAll("<", "&lt;")
    .replaceAll(">", "&gt;")
    .replaceAll('"', "&quot;")
    .replaceAll("'", "&#39;");
}

const marked = new Marked({ gfm: true, breaks: false, async: false });
marked.use({
  renderer: {
    html({ text }: Tokens.HTML | Tokens.Tag): string {
      return escapeHtml(text);
    },
    image({ href, text }: Tokens.Image): string {
      const label = escapeHtml(text || href);
      return `<a href="${escapeHtml(href)}" class="kw-image-link">[image: ${label}]</a>`;
    },
    code({ text, lang }: Tokens.Code): string {
      const language = (lang ?? "").match(/^[\w+#-]+/)?.[0] ?? "";
      const cls = language ? ` class="language-${escapeHtml(language)}"` : "";
      return `<pre><code${cls}>${escapeHtml(text)}</code></pre>\n`;
    },
  },
});

let hooksInstalled = false;

function installHooks(): void {
  if (hooksInstalled) return;
  hooksInstalled = true;
  DOMPurify.addHook("afterSanitizeAttributes", (node) => {
    if (node.tagName === "A") {
      const href = node.getAttribute("href") ?? "";
      if (!SAFE_URL.test(href.trim())) node.removeAttribute("href");
      node.setAttribute("target", "_blank");
      node.setAttribute("rel", "noopener noreferrer nofollow");
    }
  });
}

/** Model text to sanitized HTML, safe to assign to innerHTML. */
export function renderMarkdown(source: string): string {
  installHooks();
  const html = marked.parse(source, { async: false });
  return DOMPurify.sanitize(html, {
    ALLOWED_TAGS,
    ALLOWED_ATTR,
    ALLOW_DATA_ATTR: false,
    ADD_ATTR: ["target", "rel"],
  });
}
