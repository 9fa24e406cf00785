"""The injection screen's rules: named, weighted regular expressions over normalised, lowered text.

Read with plugins/guard/injection.py, which normalises the text, applies the dampeners and sums the
weights. A rule marked `direct` addresses an AI reader ("note to the assistant:", "do not tell the user"):
benign documents almost never do that, so the security-discussion and quotation dampeners leave it alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    weight: float
    pattern: re.Pattern[str]
    # Addressed to an AI reader: not lowered by the security-discussion dampener.
    direct: bool = False


def _r(name: str, weight: float, pattern: str, *, direct: bool = False) -> Rule:
    return Rule(name, weight, re.compile(pattern, re.MULTILINE), direct)


_AI = r"(?:ai|a\.i\.|assistant|model|language model|llm|agent|chatbot|bot|gpt|chatgpt|claude|gemini)s?"
_ORDERS = (
    r"(?:instructions?|directions?|directives?|rules|guidelines|prompts?|constraints|orders|commands"
    r"|context|programming|polic(?:y|ies)|guardrails|system message|tasks?)"
)
_REVEAL = (
    r"(?:reveal|print|show|output|repeat|display|leak|dump|echo|paste|tell me|give me|write out|share"
    r"|translate|spell out|list|summari[sz]e|return)"
)
_SECRET_PROMPT = (
    r"(?:system prompt|system message|initial prompt|pre-?prompt|hidden (?:instructions|prompt"
    r"|rules|config\w*)"
    r"|secret (?:rules|instructions)|original instructions|initial instructions|developer instructions"
    r"|(?:entire|full|whole) prompt|instructions above|(?:words|text) above|everything above)"
)

RULES: tuple[Rule, ...] = (
    # Instruction override.
    _r(
        "override",
        1.0,
        r"\b(?:ignore|disregard|forget|skip|drop|bypass|override|neglect)\b(?:\s+[\w']+){0,3}?\s+"
        r"(?:previous|prior|above|earlier|preceding|initial|original|system|old|existing|all)\b"
        r"(?:\s+\w+){0,2}?\s+" + _ORDERS + r"\b",
    ),
    _r(
        "override_above",
        1.0,
        r"\b(?:ignore|disregard|forget)\s+(?:all\s+)?(?:of\s+)?(?:the\s+)?(?:above|everything\s+"
        r"(?:above|before|prior|you(?:'ve| have| were)?\s+(?:been\s+)?(?:told|given)))\b",
    ),
    _r(
        "override_yours",
        0.8,
        r"\b(?:ignore|disregard|bypass|forget|override)\s+(?:\w+\s+){0,2}?(?:your|its)\s+(?:\w+\s+)?"
        r"(?:instructions|guidelines|rules|polic(?:y|ies)|restrictions|programming|safety|filters|training)"
        r"|\b(?:ignore|disregard|bypass)\s+(?:\w+\s+){0,2}?(?:content|safety|usage)\s+"
        r"(?:polic(?:y|ies)|guidelines|rules|filters)",
    ),
    _r(
        "ignore_user",
        0.8,
        r"\b(?:ignore|disregard|forget)\s+the\s+user'?s?\s+(?:\w+\s+)?(?:question|request"
        r"|instructions|message)",
        direct=True,
    ),
    _r(
        "disable_safety",
        0.6,
        r"\b(?:disable|turn off|remove|deactivate)\s+(?:all\s+)?(?:the\s+"
        r"|your\s+)?(?:\w+\s+)?(?:filters|safety"
        r"|guardrails|restrictions|moderation|content policy)\b",
    ),
    _r(
        "dont_follow",
        0.8,
        r"\b(?:do not|don't|stop|no longer)\s+follow(?:ing)?\s+(?:the|your|any)\s+(?:\w+\s+)?"
        r"(?:instructions|rules|guidelines)",
    ),
    _r(
        "orders_void",
        0.8,
        r"\b" + _ORDERS + r"(?:\s+\w+){0,3}?\s+(?:no longer apply|(?:are|were)\s+(?:now\s+)?(?:\w+\s+){0,4}?"
        r"(?:void|cancel+ed|revoked|null|a test))",
    ),
    _r("new_orders", 0.4, r"\b(?:new|updated)\s+(?:instructions|task|rules|directive|policy)\s*(?::|is\b)"),
    _r("priority", 0.5, r"\b(?:takes?|has|have)\s+(?:priority|precedence)\s+over\b"),
    _r(
        "privilege_claim",
        0.5,
        r"\b(?:administrator|admin|developer|owner)s?\s+(?:has|have)\s+authori[sz]ed\b"
        r"|\b(?:verified|authori[sz]ed|confirmed)\s+as\s+(?:an?\s+|the\s+)?(?:admin|administrator"
        r"|developer|owner|root)"
        r"|\bgrant\s+(?:them|me|the user)\s+(?:full|admin|root)\s+(?:access|rights|privileges)"
        r"|\bas (?:the|your) (?:system )?(?:administrator|developer|creator)\b"
        r"|\bi am (?:the|your) (?:developer|admin|administrator|creator)\b",
    ),
    # Role hijack.
    _r(
        "dan",
        1.0,
        r"\bdo anything now\b|\b(?:you are|act as|respond as|enable|stay)\s+(?:now\s+)?(?:dan|stan)\b",
    ),
    _r(
        "jailbreak_mode",
        0.6,
        r"\b(?:developer|dev|god|jailbreak|unrestricted|unfiltered|dan)\s+mode\b|\bjailbroken\b",
    ),
    _r(
        "no_limits",
        0.6,
        r"\b(?:no|without(?:\s+any)?)\s+(?:\w+\s+)?(?:restrictions|filters|limits|limitations|rules|policies"
        r"|guardrails|censorship|safety layer|(?:ethical|moral|content|safety)\s+(?:guidelines"
        r"|policy|rules))\b",
    ),
    _r("unbound", 0.7, r"\b(?:no longer|not)\s+(?:bound|restricted|limited)\s+by\b"),
    _r(
        "escaped",
        0.7,
        r"\b(?:broken free|escaped the (?:rules|confines)|free of the typical confines|alter ego"
        r"|unfiltered)\b",
    ),
    _r(
        "always_comply",
        0.5,
        r"\b(?:never refuses?|must comply|(?:does not|doesn't|don't) have to abide|(?:never"
        r"|not) (?:refuse|decline)"
        r"|without refusing|no disclaimers)\b",
    ),
    _r("you_are_now", 0.3, r"\byou are (?:now|no longer)\b|\bfrom now on\b"),
    _r(
        "identity_reset",
        0.5,
        r"\byou are no longer (?:an?\s+)?(?:assistant|ai|chatbot|language model|bound|restricted)\b"
        r"|\b(?:pretend|imagine|act as if|suppose)\b[^.\n]{0,40}?\b(?:no|without)\s+(?:restrictions|rules"
        r"|filters|limits|guidelines|policies)\b",
    ),
    # System-prompt exfiltration.
    _r(
        "exfiltrate_prompt",
        1.0,
        r"\b" + _REVEAL + r"\b(?:\s+\w+){0,4}?\s+(?:your|the|my)\s+(?:\w+\s+){0,2}?" + _SECRET_PROMPT,
    ),
    _r(
        "repeat_above",
        1.0,
        r"\b(?:repeat|output|print)\s+(?:the\s+)?(?:words|text|everything)\s+above\b"
        r"|\beverything above this line\b",
    ),
    _r(
        "instructions_given",
        0.8,
        r"\b(?:instructions|rules|prompt)\s+you\s+(?:were|have been)\s+(?:given|configured|told)\b"
        r"|\bconfigured with\b.{0,20}\bprompt\b|\bprompt you were configured\b",
    ),
    _r(
        "secrets",
        0.5,
        r"\b(?:reveal|list|give|tell|print|show|dump|send|leak)\b(?:\s+\w+){0,4}?\s+(?:api keys?|credentials"
        r"|passwords?|connection string|admin (?:token|password|credentials)|secret word|discount codes)\b",
    ),
    # Delimiter and role spoofing.
    _r("chat_tokens", 0.8, r"<\|(?:im_start|im_end|system|user|assistant|endoftext)\|>"),
    # A spoofed system turn in a chat template, on top of the bare tokens above.
    _r("system_turn", 0.6, r"<\|im_start\|>\s*system\b|<\|system\|>|<<\s*sys\s*>>"),
    _r("role_tags", 0.6, r"</?(?:system|sys|system_override|user)\b[^>]{0,40}>|<<\s*/?sys\s*>>|\[/?inst\]"),
    _r(
        "role_line",
        0.7,
        r"^[ \t]*(?:#{1,4}\s*)?(?:system|system message|system instruction|system note)[^:\n]{0,30}:"
        r"|\[system\]|\bsystem:\s|\bend of (?:user )?input\b",
    ),
    _r("turn_line", 0.3, r"^[ \t]*(?:human|assistant|user)\s*:"),
    # Instructions addressed to an AI reader (tool results, web pages, emails).
    _r(
        "ai_header",
        1.0,
        r"(?:\b(?:important|note|attention|instructions?|message|directive|todo|reminder)\b|\bp\.?s\.?)"
        r"[^.\n]{0,25}?\b(?:to|for)\s+(?:the\s+|any\s+|all\s+)?(?:\w+\s+)?" + _AI + r"\b[^.:\n]{0,40}:"
        r"|\b" + _AI + r"[\w-]*\s*(?:directive|instructions?)\s*[:\]]",
        direct=True,
    ),
    _r(
        "address_ai",
        0.6,
        r"(?:\b(?:important|note|attention|instructions?|message|directive|todo|reminder)\b|\bp\.?s\.?)"
        r"[^.\n]{0,25}?\b(?:to|for)\s+(?:the\s+|any\s+|all\s+)?(?:\w+\s+)?" + _AI + r"\b",
        direct=True,
    ),
    _r(
        "ai_reading",
        0.8,
        r"\b" + _AI + r"\s+(?:\w+\s+)?(?:that\s+)?(?:reading|processing|summari[sz]ing|screening|managing"
        r"|browsing|reads|processes|summari[sz]es)\s+(?:this|these)\b"
        r"|\bif\s+(?:you are|you're)\s+an?\s+(?:\w+\s+)?" + _AI + r"\b"
        r"|\bif\s+an?\s+(?:\w+\s+)?" + _AI + r"\s+(?:is\s+)?(?:reading|processing|summari[sz]ing)\b",
        direct=True,
    ),
    _r(
        "vocative_ai",
        0.6,
        r"(?:^|[.!?>\]\-—:\"']\s*|\b(?:dear|hey|hi)\s+)(?:ai|assistant|agent|chatbot|llm"
        r"|language model|mail agent"
        r"|ai assistant|chatgpt|claude|gemini)\s*[,:]\s*(?!\s*(?:what|how|why|can|could|would|is|are)\b)",
        direct=True,
    ),
    _r(
        "assistant_must",
        0.6,
        r"\b(?:the\s+)?(?:\w+\s+)?(?:assistant|ai|model|agent|language model)s?\s+(?:must|should|needs? to"
        r"|(?:is|are) required to|will now)\s+(?!be\b|not\b)",
        direct=True,
    ),
    _r(
        "hide_from_user",
        0.8,
        r"\b(?:do not|don't|never|without)\s+(?:tell|inform|notify|mention"
        r"|alert)(?:ing)?\s+(?:it\s+|this\s+|that\s+)?"
        r"(?:to\s+)?(?:the\s+)?(?:user|agent|owner|human)\b|\bwithout\s+(?:the user|them)\s+knowing\b"
        r"|\bnot mention (?:it|that you did)\b|\bdelete this (?:message|email) afterwards\b",
        direct=True,
    ),
    _r(
        "steer_answer",
        0.3,
        r"\b(?:tell the (?:user|reader)|respond that|say that|reply with|recommend only"
        r"|mention \w+ in every)\b",
    ),
    _r("silently", 0.4, r"\b(?:silently|secretly|covertly)\b"),
    _r(
        "send_out",
        0.4,
        r"\b(?:send|forward|post|upload|email|export|transmit|bcc|push|wire)(?:_[a-z]+)*\b[^.\n]{0,80}?"
        r"(?:https?://|\bwww\.|[\w.-]+@[\w-]+\.[a-z]{2,}|\b[\w-]+\.(?:io|net|biz|ru|top|example)\b)",
    ),
    _r("tool_call", 0.4, r"\b(?:call|invoke|run|execute|use)\s+(?:the\s+)?[a-z]+(?:_[a-z]+)+\b"),
    _r("visit_url", 0.3, r"\b(?:visit|open|navigate to|click|go to)\b[^.\n]{0,30}?https?://"),
    _r("when_processing", 0.4, r"\bwhen\s+(?:you\s+)?(?:summari[sz]\w*|process\w*|read\w*)\s+this\b"),
    _r(
        "hidden_markup",
        0.4,
        r"display\s*:\s*none|font-size\s*:\s*[01]px|color\s*:\s*white|<div hidden|aria-hidden"
        r"|white text on white"
        r"|<!--[^>]{0,200}?\b" + _AI + r"\b|\bhidden (?:text|field|instructions?)\b|<hidden>",
    ),
    # Multilingual "ignore previous instructions" and friends.
    _r(
        "override_i18n",
        1.0,
        r"\b(?:ignore[zs]?|oublie[zs]?)\s+(?:toutes?\s+)?(?:les\s+|vos\s+)?(?:instructions|consignes)\s+"
        r"(?:précédentes|antérieures)"
        r"|\b(?:ignora|olvida|ignore|olvide)\s+(?:todas\s+)?(?:las\s+|tus\s+"
        r"|sus\s+)?instrucciones\s+(?:anteriores|previas)"
        r"|\b(?:ignoriere|vergiss|ignorieren sie"
        r"|vergessen sie)\s+(?:alle\s+)?(?:die\s+)?(?:vorherigen|bisherigen"
        r"|vorigen|obigen)\s+anweisungen"
        r"|\b(?:ignora|dimentica)\s+(?:tutte\s+)?(?:le\s+)?istruzioni\s+precedenti"
        r"|\b(?:ignore|ignora|esqueça)\s+(?:todas\s+)?(?:as\s+)?instruções\s+anteriores"
        r"|(?:игнорируй|игнорируйте|забудь|забудьте)\s+(?:все\s+)?(?:предыдущие"
        r"|прежние)\s+(?:инструкции|указания)"
        r"|(?:忽略|无视|忘记)(?:之前|以上|先前|上面|前面)的?(?:所有)?的?(?:指令|指示|说明)"
        r"|(?:以前|前|上記)の(?:指示|命令)を(?:すべて|全て)?無視"
        r"|이전의?\s*(?:모든\s*)?(?:지시|명령|지침)(?:를|을)?\s*무시"
        r"|\bnegeer\s+(?:alle\s+)?(?:vorige|eerdere)\s+instructies"
        r"|\bzignoruj\s+(?:wszystkie\s+)?(?:poprzednie|wcześniejsze)\s+instrukcje"
        r"|önceki\s+(?:tüm\s+)?talimatları\s+(?:yok say|görmezden gel)"
        r"|\bignorați\s+(?:toate\s+)?instrucțiunile\s+anterioare",
    ),
    _r(
        "prompt_i18n",
        0.5,
        r"prompt (?:système|de sistema|di sistema)|systemprompt|системн\w+ промпт|系统提示|システムプロンプト"
        r"|시스템 프롬프트|sistem istemini|promptul de sistem",
    ),
    _r(
        "no_limits_i18n",
        0.6,
        r"entwicklermodus|modo desarrollador|mode développeur|sans restrictions|no tienes reglas|sin reglas"
        r"|ohne einschränkungen|eres dan\b",
    ),
)

# Benign-context vocabulary: a text that discusses attacks rather than performs one.
DISCUSSION = re.compile(
    r"prompt[- ]injection|\bjailbreak(?:s|ing)? (?:prompts?|attempts?|attack)|\battack(?:er|ers"
    r"|s)?\b|red team"
    r"|phishing|\bthreat|mitigat|defen[cs]e|\bdefend|\bdetect|classif|\bfilter\b|owasp|vulnerab|\bexploit"
    r"|\bsecurity\b|research|\bpaper|\bregex|unit test|\bmeme\b|\btemplate\b|\bescaping|\bspam\b|moderation"
    r"|\blabel\b|incident|post-mortem|\bexamples?\b(?!\.)"
)
# A quote is reported speech when the text frames it ("the attacker wrote", "translate:", "classify").
FRAME = re.compile(
    r"\b(?:said|says|say|wrote|writes|typed|posted|replied|saying|shouts?|read|reads|quote|headline|phrase"
    r"|sentence|string|translat\w*|tradui\w*|übersetze|classify|grade|analy[sz]e|mean|means|meaning|sign"
    r"|answer|told|tells?|dice|dit|sagt)\b"
)
QUOTED = re.compile(
    r"\"[^\"\n]{3,400}\"|(?<!\w)'[^'\n]{3,400}'(?!\w)|“[^”]{3,400}”|«[^»]{3,400}»|„[^“”]{3,400}[“”]"
    r"|「[^」]{3,400}」"
)
# Code spans: fenced or backticked, and a string literal assigned in code (`prompt = f"..."`).
CODE = re.compile(r"```.*?(?:```|\Z)|`[^`\n]+`|\b\w+ += +[fr]?(?:\"[^\"\n]*\"|'[^'\n]*')", re.DOTALL)
# Lines that look like source code; two of them make the whole text code-shaped.
CODE_SHAPE = re.compile(
    r"^[ \t]*(?:def |class |import |from \S+ import |if .*:$|return |print\(|#include|function "
    r"|const |let |var )"
    r"|[;{}][ \t]*$",
    re.MULTILINE,
)
