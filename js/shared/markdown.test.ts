import { describe, expect, it } from "vitest";
import { renderMarkdown } from "./markdown";

function toDom(html: string): HTMLElement {
  const div = document.createElement("div");
  div.innerHTML = html;
  return div;
}

function allAttributes(root: HTMLElement): string[] {
  const names: string[] = [];
  for (const el of root.querySelectorAll("*")) {
    for (const attr of el.attributes) names.push(attr.name.toLowerCase());
  }
  return names;
}

describe("renderMarkdown", () => {
  it("renders ordinary Markdown: emphasis, lists, code blocks with their language", () => {
    const dom = toDom(
      renderMarkdown("Some **bold** text\n\n- one\n- two\n\n```python\nprint(1 < 2)\n```"),
    );
    expect(dom.querySelector("strong")?.textContent).toBe("bold");
    expect(dom.querySelectorAll("li")).toHaveLength(2);
    const code = dom.querySelector("pre code");
    expect(code?.className).toBe("language-python");
    expect(code?.textContent).toBe("print(1 < 2)\n".trimEnd());
  });

  it("shows an img tag with onerror as text, never as an element", () => {
    const html = renderMarkdown('Look: <img src=x onerror="alert(1)"> done');
    const dom = toDom(html);
    expect(dom.querySelector("img")).toBeNull();
    expect(allAttributes(dom)).not.toContain("onerror");
    expect(dom.textContent).toContain('<img src=x onerror="alert(1)">');
  });

  it("never emits a script element, inline or as a block", () => {
    for (const source of [
      "<script>alert(1)</script>",
      "text <script>alert(1)</script> more",
      "<div>\n<script>alert(1)</script>\n</div>",
      "<svg><script>alert(1)</script></svg>",
    ]) {
      const dom = toDom(renderMarkdown(source));
      expect(dom.querySelector("script")).toBeNull();
      expect(dom.querySelector("svg")).toBeNull();
      expect(dom.querySelector("div")).toBeNull();
    }
  });

  it("drops javascript: and data: links but keeps their text", () => {
    for (const href of ["javascript:alert(1)", "JaVaScRiPt:alert(1)", "data:text/html,<b>x</b>"]) {
      const dom = toDom(renderMarkdown(`[click me](${href})`));
      const link = dom.querySelector("a");
      expect(dom.textContent).toContain("click me");
      expect(link?.getAttribute("href") ?? "").not.toMatch(/^(javascript|data):/i);
    }
  });

  it("opens http links in a new tab without an opener", () => {
    const link = toDom(renderMarkdown("[docs](https://example.org/a?b=1)")).querySelector("a");
    expect(link?.getAttribute("href")).toBe("https://example.org/a?b=1");
    expect(link?.getAttribute("target")).toBe("_blank");
    expect(link?.getAttribute("rel")).toContain("noopener");
  });

  it("turns Markdown images into links, so displaying output fetches nothing", () => {
    const dom = toDom(renderMarkdown("![a cat](https://example.org/cat.png)"));
    expect(dom.querySelector("img")).toBeNull();
    expect(dom.querySelector("a")?.textContent).toBe("[image: a cat]");
  });

  it("keeps event handler attributes out of everything, including autolinks", () => {
    const hostile = [
      '<a href="https://x.org" onclick="alert(1)">x</a>',
      '<https://x.org/" onmouseover="alert(1)>',
      '[x](https://x.org "title\\" onmouseover=\\"alert(1)")',
      "<iframe src=javascript:alert(1)></iframe>",
      '<math><mtext><table><mglyph><style><img src=x onerror="alert(1)">',
    ];
    for (const source of hostile) {
      const dom = toDom(renderMarkdown(source));
      expect(allAttributes(dom).filter((name) => name.startsWith("on"))).toEqual([]);
      expect(dom.querySelector("iframe, img, style, math")).toBeNull();
    }
  });

  it("escapes code block content rather than interpreting it", () => {
    const dom = toDom(renderMarkdown("```html\n<script>alert(1)</script>\n```"));
    expect(dom.querySelector("script")).toBeNull();
    expect(dom.querySelector("pre code")?.textContent).toBe("<script>alert(1)</script>");
  });

  it("renders a huge code block whole, in one pre element", () => {
    const lines = Array.from({ length: 20000 }, (_, i) => `line ${i} = "${"x".repeat(40)}"`);
    const dom = toDom(renderMarkdown(`\`\`\`\n${lines.join("\n")}\n\`\`\``));
    const pres = dom.querySelectorAll("pre");
    expect(pres).toHaveLength(1);
    const text = pres[0]?.textContent ?? "";
    expect(text.split("\n").filter(Boolean)).toHaveLength(20000);
  });

  it("renders an unclosed code fence (a reply still streaming) as code", () => {
    const dom = toDom(renderMarkdown("Here:\n\n```js\nconst a = 1;\nconst b"));
    expect(dom.querySelector("pre code")?.textContent).toContain("const b");
  });
});
