#!/usr/bin/env python3
"""Generate the tokenizer parity corpus: tests/fixtures/tokenizers/corpus.jsonl.

Deterministic (fixed seed, no input files): the same script always writes the same bytes.
Each line is {"kind": ..., "text": ...}. The strings aim at the places where byte-level BPE
implementations disagree: pre-tokenizer categories (letters, marks, numbers, whitespace,
punctuation) in many scripts, contractions, digit runs, special-token text inside user
content, emoji sequences, Unicode whitespace and line breaks, control characters, long
inputs. Every string is valid UTF-8 (JSON cannot carry anything else).

    make_tokenizer_corpus.py [-o tests/fixtures/tokenizers/corpus.jsonl]
    make_tokenizer_corpus.py --llama-expected MODEL.gguf [-o smollm2-expected.jsonl]

The second form records llama.cpp's ids for the corpus (via llama-cpp-python, vocab only)
so CI, which has no llama-cpp-python, can still compare: first line a header with the
corpus sha256, then per corpus line {"ids": [...], "ids_special": [...]} (parse_special off
and on, no BOS).
"""
import argparse
import hashlib
import json
import pathlib
import random

SEED = 20250521

CODE = {
    "c": """#include <stdio.h>
/* sum of squares */
static long sumsq(const int *a, size_t n) {
\tlong s = 0;
\tfor (size_t i = 0; i < n; i++) s += (long)a[i] * a[i];
\treturn s;
}
int main(void) { int v[] = {1, 2, 3}; printf("%ld\\n", sumsq(v, 3)); return 0; }
""",
    "python": '''def fib(n: int) -> list[int]:
    """Return the first n Fibonacci numbers."""
    a, b = 0, 1
    out = []
    for _ in range(n):
        out.append(a)
        a, b = b, a + b
    return out


if __name__ == "__main__":
    print(fib(10))  # [0, 1, 1, 2, 3, 5, 8, 13, 21, 34]
''',
    "javascript": """const express = require('express');
const app = express();
app.get('/api/users/:id', async (req, res) => {
  const user = await db.users.findOne({ id: req.params.id });
  if (!user) return res.status(404).json({ error: `no user ${req.params.id}` });
  res.json(user);
});
app.listen(3000, () => console.log('listening on :3000'));
""",
    "rust": """use std::collections::HashMap;

fn word_count(text: &str) -> HashMap<&str, usize> {
    let mut m = HashMap::new();
    for w in text.split_whitespace() {
        *m.entry(w).or_insert(0) += 1;
    }
    m
}
""",
    "go": """package main

import (
\t"fmt"
\t"strings"
)

func main() {
\tparts := strings.Split("a,b,c", ",")
\tfor i, p := range parts {
\t\tfmt.Printf("%d=%s\\n", i, p)
\t}
}
""",
    "java": """public final class Point implements Comparable<Point> {
    private final double x, y;
    public Point(double x, double y) { this.x = x; this.y = y; }
    @Override public int compareTo(Point o) { return Double.compare(x * x + y * y, o.x * o.x + o.y * o.y); }
    @Override public String toString() { return "Point(" + x + ", " + y + ")"; }
}
""",
    "sql": """SELECT u.id, u.name, COUNT(o.id) AS n_orders
FROM users u LEFT JOIN orders o ON o.user_id = u.id
WHERE u.created_at >= '2024-01-01' AND u.email LIKE '%@example.com'
GROUP BY u.id, u.name HAVING COUNT(o.id) > 3 ORDER BY n_orders DESC LIMIT 10;
""",
    "html": """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Test &amp; demo</title></head>
<body><div class="card" id="main"><p>Hello, <b>world</b>!</p><!-- comment --></div></body></html>
""",
    "css": """.card > p:first-child::before { content: "\\201C"; margin: 0 0.5em; color: #ff00aa; }
@media (max-width: 600px) { .card { padding: 4px 8px !important; } }
""",
    "bash": """#!/usr/bin/env bash
set -euo pipefail
for f in "$@"; do
  [[ -f "$f" ]] || { echo "missing: $f" >&2; exit 1; }
  sha256sum "$f" | awk '{print $1}'
done 2>&1 | tee -a /var/log/sums.log
""",
    "haskell": """quicksort :: Ord a => [a] -> [a]
quicksort [] = []
quicksort (p:xs) = quicksort [x | x <- xs, x < p] ++ [p] ++ quicksort [x | x <- xs, x >= p]
""",
    "lisp": """(defun factorial (n)
  (if (<= n 1) 1 (* n (factorial (- n 1)))))
(format t "~a~%" (factorial 20))
""",
    "json": """{"name": "tandem", "version": "0.1.0", "tags": ["llm", "inference"],
 "limits": {"max_tokens": 32768, "temperature": 0.7, "top_p": 0.95}, "ok": true, "x": null}
""",
    "yaml": """services:
  api:
    image: "tandem:latest"
    ports: ["8080:8080"]
    environment:
      - TANDEM_LOG_LEVEL=debug   # verbose
""",
    "markdown": """# Title

Some *emphasis*, **strong**, `code`, and a [link](https://example.com/a?b=c&d=e).

- item one
- item two
  1. nested

```python
print("hi")
```
""",
    "latex": r"""\begin{equation}
  \int_0^\infty e^{-x^2}\,dx = \frac{\sqrt{\pi}}{2}, \qquad \sum_{n=1}^{\infty} \frac{1}{n^2} = \frac{\pi^2}{6}
\end{equation}
""",
    "cpp": """template <typename T>
std::vector<T> merge(const std::vector<T>& a, const std::vector<T>& b) {
    std::vector<T> out; out.reserve(a.size() + b.size());
    std::merge(a.begin(), a.end(), b.begin(), b.end(), std::back_inserter(out));
    return out;   // NRVO
}
""",
    "php": """<?php
$arr = ['a' => 1, 'b' => 2];
foreach ($arr as $k => $v) { echo "$k => $v\\n"; }
?>
""",
    "ruby": """class Greeter
  def initialize(name) = @name = name
  def greet = puts("Hello, #{@name}!")
end
Greeter.new("Matz").greet
""",
}

PROSE = {
    "en": ["The quick brown fox jumps over the lazy dog.",
           "It's a truth universally acknowledged that a single man in possession of a good "
           "fortune must be in want of a wife.",
           "We'll see; they've said they'd come, but I'm not sure they're ready.",
           "In 1969, Apollo 11 landed on the Moon; 384,400 km away, at 20:17 UTC."],
    "fr": ["L'été dernier, nous sommes allés à la mer ; c'était magnifique !",
           "« Qu'est-ce que c'est ? » demanda-t-il, à l'aube."],
    "de": ["Größere Straßen führen über die Brücke nach Köln.",
           "Übermäßiger Äpfelkonsum ist nicht schädlich, oder?"],
    "es": ["¿Dónde está la biblioteca? ¡Allí, junto al niño pequeño!",
           "El pingüino comió ñoquis en Año Nuevo."],
    "pt": ["A ação começou às três horas; não houve atenção à informação."],
    "it": ["Perché l'hai fatto? Così è la vita, più o meno."],
    "pl": ["Zażółć gęślą jaźń. Łódź jest dużym miastem."],
    "tr": ["İstanbul'da ılık bir gün; şoför çok güzel şarkı söylüyor."],
    "vi": ["Tiếng Việt có nhiều dấu thanh: à, á, ả, ã, ạ, ằ, ắ, ẳ, ẵ, ặ."],
    "ru": ["Съешь же ещё этих мягких французских булок, да выпей чаю.",
           "Москва — столица России; население около 13 млн человек."],
    "uk": ["Чуєш їх, доцю, га? Кумедна ж ти, прощайся без ґольфів!"],
    "el": ["Ξεσκεπάζω την ψυχοφθόρα βδελυγμία. Η Αθήνα είναι όμορφη."],
    "zh": ["我能吞下玻璃而不伤身体。", "今天天气很好，我们去公园散步吧！",
           "人工智能正在改变世界，大型语言模型是其中的重要技术。"],
    "ja": ["私はガラスを食べられます。それは私を傷つけません。",
           "東京スカイツリーは高さ634メートルです。カタカナとひらがなと漢字。"],
    "ko": ["나는 유리를 먹을 수 있어요. 그래도 아프지 않아요.", "한국어 문장입니다: 안녕하세요!"],
    "ar": ["أستطيع أكل الزجاج و هذا لا يؤلمني.", "مرحبا بالعالم! العدد ١٢٣٤٥ بالأرقام العربية."],
    "he": ["אני יכול לאכול זכוכית וזה לא מזיק לי.", "שָׁלוֹם עֲלֵיכֶם"],
    "fa": ["من می‌توانم بدون احساس درد شیشه بخورم."],
    "hi": ["मैं काँच खा सकता हूँ और मुझे उससे कोई चोट नहीं पहुंचती।", "संख्या १२३४५ देवनागरी अंकों में।"],
    "bn": ["আমি কাঁচ খেতে পারি, তাতে আমার কোনো ক্ষতি হয় না।"],
    "ta": ["நான் கண்ணாடி சாப்பிடுவேன், அதனால் எனக்கு ஒரு கேடும் வராது."],
    "th": ["ฉันกินกระจกได้ แต่มันไม่ทำให้ฉันเจ็บ", "ภาษาไทยไม่มีการเว้นวรรคระหว่างคำ"],
    "ka": ["მინას ვჭამ და არა მტკივა."],
    "hy": ["Կրնամ ապակի ուտել և ինծի անհանգիստ չըներ։"],
    "am": ["ብርጭቆ መብላት እችላለሁ፣ አይጎዳኝም።"],
    "my": ["ကျွန်တော် ကျွန်မ မှန်စားနိုင်တယ်။"],
    "km": ["ខ្ញុំអាចញុំកញ្ចក់បាន ដោយគ្មានបញ្ហា"],
}

EMOJI = ["😀", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇯🇵", "🇺🇸🇫🇷", "❤️", "1️⃣", "🧑🏿‍🚀", "👩‍❤️‍💋‍👨",
         "🫠", "🏴󠁧󠁢󠁳󠁣󠁴󠁿", "✊🏻✊🏼✊🏽✊🏾✊🏿", "☕", "🤷‍♀️"]

WHITESPACE = ["\u00a0", "\u3000", "\u2002", "\u2003", "\u2009", "\u200a", "\u202f", "\u205f",
              "\u1680", "\u2028", "\u2029", "\u0085", "\t", "\r\n", "\n", "\r", "\v", "\f",
              "\u200b", "\ufeff", "\u180e", "\u2060"]

SPECIALS = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<think>", "</think>",
            "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|start|>", "<|channel|>",
            "<|message|>", "<|end|>", "<|return|>", "<|call|>", "<|startoftext|>",
            "<repo_name>", "<file_sep>", "<|im_sta", "<|", "|>", "<<|im_end|>>"]

CONTRACTIONS = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'T", "'RE", "'Ve", "'rE",
                "'M", "'LL", "'lL", "'D", "\u2019s", "'\u017f", "'x", "''", "' s"]

WORDS = ["the", "cat", "don", "we", "they", "it", "I", "HELLO", "Straße", "naïve", "café",
         "tokenizer", "x", "über", "ñ", "日本", "données", "ABC", "aBc", "Zürich"]

# Characters from many general categories, for random strings.
POOL = ("abcxyzABCXYZ0123456789 .,;:!?'\"-_/\\()[]{}<>@#$%^&*+=|~`"
        "éèêëàâäîïôöùûüçñßøåæœÿ"
        "ÀÉÎÕÜÇ"
        "αβγδεζηθΑΒΓΔ"
        "абвгдеёжзАБВГДЕЁЖЗ"
        "你好世界中文字符漢字"
        "ひらがなカタカナ"
        "한국어글자"
        "مرحباعالم"
        "שלוםעולם"
        "नमस्तेदुनिया"
        "สวัสดีโลก"
        "٠١٢٣٤٥٦٧٨٩०१२३४५"
        "０１２３ＡＢＣａｂｃ"
        "²³¹½¼ⅫⅣ"
        "\u0301\u0300\u0308\u0327\u20dd"
        "ʰʲˠ"  # modifier letters (Lm)
        "ǅǈǋ"  # titlecase (Lt)
        "—–…‘’“”«»‹›•·§¶†‡"
        "€£¥₹₿$¢"
        "±×÷≠≤≥∞∑∏√∫"
        "→←↑↓⇒"
        "😀🎉🚀✨🔥"
        "\u00a0\u3000\u2009\t\n\r")


def word_mix(rng):
    out = []
    for _ in range(rng.randint(1, 12)):
        r = rng.random()
        if r < 0.5:
            out.append(rng.choice(WORDS))
        elif r < 0.7:
            out.append(rng.choice(WORDS) + rng.choice(CONTRACTIONS))
        elif r < 0.8:
            out.append(str(rng.randint(0, 10 ** rng.randint(1, 12))))
        elif r < 0.9:
            out.append(rng.choice(EMOJI))
        else:
            out.append(rng.choice(".,;:!?-()\"'"))
        out.append(rng.choice([" ", " ", " ", "  ", "\n", "\t", rng.choice(WHITESPACE), ""]))
    return "".join(out)


def random_pool(rng, n):
    return "".join(rng.choice(POOL) for _ in range(n))


FIXTURES = pathlib.Path(__file__).resolve().parents[1] / "tests/fixtures/tokenizers"


def llama_expected(model, out):
    import llama_cpp  # only needed for this mode

    corpus = FIXTURES / "corpus.jsonl"
    raw = corpus.read_bytes()
    texts = [json.loads(line)["text"] for line in raw.split(b"\n") if line]
    llm = llama_cpp.Llama(str(model), vocab_only=True, verbose=False)
    with open(out, "w", encoding="utf-8", newline="\n") as f:
        f.write(json.dumps({"corpus_sha256": hashlib.sha256(raw).hexdigest(),
                            "model": pathlib.Path(model).name,
                            "llama_cpp_python": llama_cpp.__version__,
                            "add_bos": False}) + "\n")
        for t in texts:
            b = t.encode("utf-8")
            f.write(json.dumps({"ids": llm.tokenize(b, add_bos=False, special=False),
                                "ids_special": llm.tokenize(b, add_bos=False, special=True)},
                               separators=(",", ":")) + "\n")
    print(f"{out}: {len(texts)} strings, {pathlib.Path(out).stat().st_size} bytes")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-o", "--out", type=pathlib.Path, default=None)
    ap.add_argument("--llama-expected", type=pathlib.Path, metavar="MODEL")
    args = ap.parse_args()
    if args.llama_expected:
        llama_expected(args.llama_expected, args.out or FIXTURES / "smollm2-expected.jsonl")
        return
    args.out = args.out or FIXTURES / "corpus.jsonl"
    rng = random.Random(SEED)
    items = []

    def add(kind, text):
        items.append({"kind": kind, "text": text})

    # fixed edge cases
    for t in ["", " ", "  ", "\n", "\n\n", "\n\n\n\n\n\n", "\r\n", "\r\n\r\n", "\t", "\t\t x",
              "a", "A", "0", "'", "''", "'s", "don't", "DON'T", "I'M", "y'all", "rock 'n' roll",
              " leading", "trailing ", "  two  spaces  ", "x\u00a0y", "x\u3000y", "x\u0085y",
              "\u00a0\u00a0 a", "a \u00a0b", "\ufeffBOM first", "zero\u200bwidth",
              "nul\u0000byte", "\u0001\u0002\u0003\u001f\u007f", "\u0080\u0081\u009f",
              "\ufffd", "\uffff\ufffe", "\U0010ffff", "\ue000\uf8ff", "\U000f0000",
              "\u0080", "\u07ff", "\u0800", "\U00010000", "e\u0301", "\u00e9",
              "n\u0303o", "\u1100\u1161\u11a8", "z\u0335\u0321\u0322\u0327\u0328\u0334a\u0300\u0301\u0302lgo",
              "Å", "\u212b", "\ufb01", "\u017f\u017ft", "'\u017f", "K\u212a", "ǅemal", "ǈubav",
              "12345678901234567890", "1" * 100, "3.14159265358979", "1,000,000",
              "０１２３４５", "٠١٢٣٤٥٦٧٨٩", "१२३", "²³", "½ cup", "Ⅻ o'clock", "x²+y²=z²",
              "$100.00", "€5,-", "#hashtag", "@mention", "http://a.b/c?d=e#f",
              "user@example.com", "C:\\Windows\\System32", "/usr/local/bin/",
              "....", "!!!???", "---", "===", "***", "a--b", "a...b", "(a)[b]{c}",
              "\U00031350\U00031351", "\U0001e030", "\U00011f00\U00011f50"]:
        add("edge", t)
    # code
    for lang, src in CODE.items():
        add(f"code-{lang}", src)
        lines = src.splitlines(keepends=True)
        for i in range(len(lines)):
            add(f"code-{lang}-line", lines[i])
        for _ in range(6):
            a = rng.randrange(len(lines))
            b = rng.randrange(a, len(lines)) + 1
            chunk = "".join(lines[a:b])
            if rng.random() < 0.5:
                chunk = chunk.replace("    ", "\t")
            if rng.random() < 0.3:
                chunk = chunk.replace("\n", "\r\n")
            add(f"code-{lang}-chunk", chunk)
    # prose
    for lang, sents in PROSE.items():
        for s in sents:
            add(f"prose-{lang}", s)
            add(f"prose-{lang}-upper", s.upper())
            add(f"prose-{lang}-ws", s.replace(" ", rng.choice(WHITESPACE)))
        add(f"prose-{lang}-para", "\n\n".join(sents * 2))
    for _ in range(150):
        langs = rng.sample(sorted(PROSE), rng.randint(2, 4))
        add("prose-mixed", rng.choice([" ", "\n", ""]).join(rng.choice(PROSE[lang])
                                                                 for lang in langs))
    # emoji
    for e in EMOJI:
        add("emoji", e)
        add("emoji", f"hi {e} there{e}{e}")
    for _ in range(60):
        add("emoji-mix", "".join(rng.choice(EMOJI + [" ", "a", "1", "!", "\n"])
                                 for _ in range(rng.randint(1, 20))))
    # whitespace
    for w in WHITESPACE:
        add("ws", f"a{w}b")
        add("ws", f"a {w} b")
        add("ws", f"{w}{w}{w}x")
        add("ws", f"x{w}")
        add("ws", f"1{w}2")
        add("ws", f"!{w}?")
    for _ in range(80):
        add("ws-mix", "".join(rng.choice(WHITESPACE + [" ", " ", "a", "1", ".", "é"])
                              for _ in range(rng.randint(1, 30))))
    # digits
    for n in [1, 2, 3, 4, 5, 6, 7, 9, 10, 17, 33, 100]:
        d = "".join(rng.choice("0123456789") for _ in range(n))
        add("digits", d)
        add("digits", f"x{d}y")
        add("digits", f" {d} ")
        add("digits", f"{d}abc{d}")
    for _ in range(60):
        add("digits-mix", " ".join(str(rng.randint(0, 10 ** rng.randint(1, 20)))
                                   for _ in range(rng.randint(1, 8))))
    # contractions
    for c in CONTRACTIONS:
        for w in ["it", "We", "THEY", "I", "you", "x"]:
            add("contr", f"{w}{c}")
            add("contr", f"{w}{c} go")
        add("contr", f"{c}")
        add("contr", f" {c}")
        add("contr", f"{c}{c}")
    # special-token text in user content
    for s in SPECIALS:
        add("special", s)
        add("special", f"a{s}b")
        add("special", f" {s} ")
        add("special", f"{s}{s}")
        add("special", f"user says {s}\nand then{s}.")
    for _ in range(80):
        add("special-mix", "".join(rng.choice(SPECIALS + [" ", "hi", "\n", "1", "é"])
                                   for _ in range(rng.randint(1, 12))))
    chat = ("<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi! What's "
            "2+2?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n4<|im_end|>\n")
    add("special-chat", chat)
    add("special-chat", "<|start|>user<|message|>Hello<|end|><|start|>assistant<|channel|>"
                        "final<|message|>Hi<|return|>")
    # random mixes
    for _ in range(900):
        add("words", word_mix(rng))
    for _ in range(500):
        add("pool", random_pool(rng, rng.randint(1, 80)))
    # long inputs
    add("long-word", "a" * 10000)
    add("long-word", "supercalifragilistic" * 300)
    add("long-ws", " " * 5000 + "x")
    add("long-ws", "\n" * 3000)
    add("long-digits", "".join(rng.choice("0123456789") for _ in range(5000)))
    add("long-cjk", "".join(rng.choice("你好世界中文字符漢字日本語") for _ in range(3000)))
    big = []
    size = 0
    while size < 100 * 1024:
        r = rng.random()
        if r < 0.4:
            piece = rng.choice(rng.choice(list(PROSE.values())))
        elif r < 0.7:
            piece = rng.choice(list(CODE.values()))
        else:
            piece = word_mix(rng)
        big.append(piece)
        big.append(rng.choice([" ", "\n", "\n\n", "\t"]))
        size += len("".join(big[-2:]).encode())
    add("long-100k", "".join(big))

    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", encoding="utf-8", newline="\n") as f:
        for it in items:
            f.write(json.dumps(it, ensure_ascii=False) + "\n")
    print(f"{args.out}: {len(items)} strings, {args.out.stat().st_size} bytes")


if __name__ == "__main__":
    main()
