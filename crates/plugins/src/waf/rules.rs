//! The rule set the `waf` plugin ships with. Rules match the canonical form of an input (see
//! [`super::normalize`]: decoded, lowercase, comments and runs of whitespace made one space),
//! so each is written once, in lowercase, for that form.
//!
//! A literal is found by one automaton over all literals; a regex is one of one set. Every
//! regex here needs a character beyond letters, digits and `._~/-:,@=` (a space, a quote, a
//! bracket, ...): inputs made of those alone skip the regex set.

use std::borrow::Cow;

use super::engine::{Pattern, RuleSpec, Targets};

/// Every rule looks everywhere: path segments of REST APIs carry payloads as arguments do.
const ALL: Targets = Targets::ALL;

macro_rules! rule {
    ($id:expr, $class:expr, $targets:expr, command_regex $text:expr, $msg:expr) => {
        RuleSpec {
            command_line: true,
            ..rule!($id, $class, $targets, regex $text, $msg)
        }
    };
    ($id:expr, $class:expr, $targets:expr, literals [$($text:expr),+ $(,)?], $msg:expr) => {
        RuleSpec {
            id: $id,
            class: Cow::Borrowed($class),
            targets: $targets,
            pattern: Pattern::Literals(Cow::Borrowed(&[$(Cow::Borrowed($text)),+])),
            score: 5,
            message: Cow::Borrowed($msg),
            command_line: false,
        }
    };
    ($id:expr, $class:expr, $targets:expr, regex $text:expr, $msg:expr) => {
        RuleSpec {
            id: $id,
            class: Cow::Borrowed($class),
            targets: $targets,
            pattern: Pattern::Regex {
                text: Cow::Borrowed($text),
                needs_symbol: true,
            },
            score: 5,
            message: Cow::Borrowed($msg),
            command_line: false,
        }
    };
}

pub(crate) const DEFAULT_RULES: &[RuleSpec] = &[
    // SQL injection.
    rule!(1001, "sqli", ALL, regex r#"['"`)]\s*(or|and|xor|\|\||&&)\s*[\w'"`(]+\s*(=|<|>|!=|<>|\blike\b|\bis\b|\bin\b|\bbetween\b|\brlike\b|\bregexp\b)"#,
        "a quote closed, then a boolean condition"),
    rule!(1002, "sqli", ALL, regex r#"['"`)]\s*(or|and|\|\||&&)\s+[\w'"]+\s*(--|#|;|$)"#,
        "a quote closed, then a condition and the end of the statement"),
    rule!(1003, "sqli", ALL, regex r"\bunion(\s+(all|distinct))?\s*(\(\s*)?select\b",
        "UNION SELECT"),
    rule!(1004, "sqli", ALL, regex r#"['"`)\d]\s*;\s*(drop|truncate|alter|create|rename)\s+(table|database|schema|view|user|procedure|function)\b"#,
        "a statement stacked after the value: DROP, ALTER, CREATE ..."),
    rule!(1005, "sqli", ALL, regex r#"['"`)\d]\s*;\s*(delete\s+from|insert\s+into|update\s+[\w.`"]+\s+set|select\s|exec(ute)?\s|declare\s|shutdown\b)"#,
        "a statement stacked after the value: DELETE, INSERT, UPDATE, EXEC ..."),
    rule!(1006, "sqli", ALL, regex r"\b(sleep|benchmark|pg_sleep|dbms_pipe\.receive_message|randomblob)\s*\(",
        "a time delay function"),
    rule!(1007, "sqli", ALL, regex r"\bwaitfor\s+(delay|time)\s+'",
        "WAITFOR DELAY"),
    rule!(
        1008,
        "sqli",
        ALL,
        literals["information_schema"],
        "a system catalogue"
    ),
    rule!(1009, "sqli", ALL, regex r"\b(sysobjects|syscolumns|pg_catalog|pg_shadow|mysql\.user|sqlite_master|all_tables|dba_users)\b",
        "a system catalogue"),
    rule!(1010, "sqli", ALL, regex r"\b(load_file|into\s+(out|dump)file|xp_cmdshell|sp_executesql|utl_http\.request|dbms_java)\b",
        "a file or command primitive of a database"),
    rule!(1011, "sqli", ALL, regex r#"'\s*(--|#|/\*)|"\s*(--|/\*)"#,
        "a quote closed, then a comment ending the statement"),
    rule!(1012, "sqli", ALL, regex r"\b(and|or|having|where)\s+\(?\s*(\d+|'[^']*')\s*(=|<|>|<>|!=)\s*(\d+|'[^']*')\s*\)?(\s|--|#|;|$)",
        "a constant condition (1=1, 'a'='a')"),
    rule!(1013, "sqli", ALL, regex r"\b(extractvalue|updatexml|exp|floor\s*\(\s*rand|geometrycollection|polygon|multipoint)\s*\(.*\bselect\b",
        "an error-based extraction"),
    rule!(1014, "sqli", ALL, regex r"\b(char|chr|concat|concat_ws|group_concat|ascii|substring|substr|mid|hex|unhex|cast|convert)\s*\(.*\b(select|from|0x[0-9a-f]+|char\s*\()",
        "string functions building a query"),
    rule!(1015, "sqli", ALL, regex r"\border\s+by\s+\d+\s*(--|#|;|$)",
        "ORDER BY a column number, to count columns"),
    rule!(1016, "sqli", ALL, regex r#"\bselect\s+(\*|[\w@(),'"`.]+(\s*,\s*[\w@(),'"`.]+)+|@@\w+|version\s*\(|user\s*\(|database\s*\()\s+from\b"#,
        "a SELECT of columns FROM a table"),
    rule!(1018, "sqli", ALL, regex r#"['"`)\d]\s*(and|or|xor|&&|\|\|)\s*\(+\s*select\b"#,
        "a condition on a subquery"),
    rule!(1017, "sqli", ALL, regex r"@@(version|datadir|hostname|basedir)\b|\b(version|current_user|session_user|database|schema)\s*\(\s*\)\s*(--|#|,|\))",
        "a server variable or function"),
    // Cross-site scripting.
    rule!(2001, "xss", ALL, regex r"<\s*/?\s*script\b", "a script element"),
    rule!(2002, "xss", ALL, regex r"\b(javascript|vbscript|livescript)\s*:", "a script URL"),
    rule!(2003, "xss", ALL, regex r"<[^>]*\bon[a-z]{3,20}\s*=", "an event handler attribute"),
    rule!(2004, "xss", ALL, regex r"<\s*(iframe|frame|object|embed|applet|meta|base|svg|math|xss|isindex|marquee|frameset|template|portal)\b",
        "an element that runs or loads content"),
    rule!(2005, "xss", ALL, regex r#"\b(alert|prompt|confirm)\s*(\(\s*(['"`\d/)]|document|window|this|self|top)|`)|\b(eval|settimeout|setinterval|atob|string\.fromcharcode)\s*\(\s*['"`(a-z]"#,
        "a script call"),
    rule!(2006, "xss", ALL, regex r"\bdocument\s*\.\s*(cookie|domain|write|location)|\bwindow\s*\.\s*(location|name|open)\b|\blocation\s*\.\s*(href|hash)\s*=",
        "script reading or steering the page"),
    rule!(2007, "xss", ALL, regex r"\bdata\s*:\s*text/html|\bsrcdoc\s*=|\bformaction\s*=|\bxlink:href\s*=",
        "markup loaded from an attribute"),
    rule!(2008, "xss", ALL, regex r"\bstyle\s*=[^>]*(expression\s*\(|url\s*\(\s*['\x22]?\s*javascript)",
        "script in a style"),
    rule!(2009, "xss", ALL, regex r"<\s*(img|image|video|audio|source|input|body|link|style|details|select|textarea|keygen|a)\b[^>]*\b(src|href|dynsrc|lowsrc|background|action)\s*=\s*['\x22]?\s*(javascript|vbscript|data)\s*:",
        "a script URL in an element"),
    // Path traversal and local files.
    rule!(3001, "traversal", ALL, literals ["../", "..\\", "..;/"], "a parent directory"),
    rule!(3003, "traversal", ALL, literals [
        "/etc/passwd", "/etc/shadow", "/etc/group", "/etc/hosts", "/etc/issue", "/etc/sudoers",
        "/etc/crontab", "/etc/environment", "/proc/self/", "/proc/1/", "/dev/tcp/",
    ], "a system file of Unix"),
    rule!(3004, "traversal", ALL, literals [
        "boot.ini", "win.ini", "system.ini", "web.config", ".htaccess", ".htpasswd",
        ".git/config", "/.env", "c:\\windows", "c:\\winnt", "\\windows\\system32",
    ], "a system or configuration file"),
    rule!(3005, "traversal", ALL, literals["file://"], "a file URL"),
    // Command injection.
    rule!(4001, "cmdi", ALL, command_regex r"(;|\||&&|\$\(|\n)\s*\{?\s*(cat|ls|id|whoami|uname|wget|curl|nc|ncat|netcat|bash|sh|zsh|python[23]?|perl|ruby|php|ping|nslookup|dig|rm|chmod|chown|echo|printenv|env|ps|kill|nohup|telnet|ifconfig|ipconfig|head|tail|tftp|busybox|powershell|cmd|sleep|net\s+user|dir|certutil|bitsadmin|systeminfo|tasklist|wmic|reg|nc\.exe)(\s|$|;|\||&|<|>|`|\)|,)",
        "a shell command after a command separator"),
    // A single `&` separates commands too, but joins words in prose: only commands no
    // sentence has after one.
    rule!(4006, "cmdi", ALL, command_regex r"&\s*(whoami|uname|wget|curl|nc|ncat|netcat|bash|sh|python[23]?|perl|powershell|cmd|nslookup|ping|busybox|tftp|telnet|ifconfig|ipconfig|net\s+user|certutil|bitsadmin|systeminfo|tasklist|wmic)(\s|$|;|\||&|<|>|\))",
        "a shell command after `&`"),
    // Backticks quote code in Markdown too: only a command in them counts.
    rule!(4002, "cmdi", ALL, command_regex r"(^|[^`])`\s*(cat|id|whoami|uname|wget|curl|nc|ncat|netcat|bash|sh|ping|nslookup|sleep|echo|rm|env|printenv|ifconfig)\b[^`]*`|\$\{ifs\}|\$ifs\b|\$\{[a-z_]+:",
        "a shell substitution"),
    rule!(4003, "cmdi", ALL, command_regex r"(/bin/|/usr/bin/|/usr/local/bin/|/sbin/)(ba|z|da|k|c)?sh\b|/bin/(cat|nc|busybox)\b|\bcmd(\.exe)?\s*/c\b|\bpowershell(\.exe)?\s+-",
        "a shell by path"),
    rule!(4004, "cmdi", ALL, command_regex r">\s*/dev/(tcp|udp)/|\b(nc|ncat|netcat)\s+(-[a-z]*e|[\w.]+\s+\d+)|\bbash\s+-i\b|\bmkfifo\b",
        "a reverse shell"),
    rule!(4005, "cmdi", ALL, command_regex r"[;|&`]\s*(wget|curl)\s+(-\w+\s+)*https?://|\b(wget|curl)\s+[^\s]+\s*\|\s*(ba)?sh\b",
        "a download piped into a shell"),
    // PHP code injection.
    rule!(5001, "php", ALL, regex r"<\?(php\b|=|\s)", "a PHP opening tag"),
    rule!(5002, "php", ALL, regex r"\b(shell_exec|passthru|proc_open|pcntl_exec|phpinfo|base64_decode|gzinflate|gzuncompress|str_rot13|file_put_contents|file_get_contents|include_once|require_once|preg_replace|create_function|call_user_func|call_user_func_array|move_uploaded_file|unserialize|highlight_file|show_source|parse_str|ini_set)\s*\(",
        "a PHP function call"),
    // Names that are English words too: only with a string or a variable for argument.
    rule!(5007, "php", ALL, regex r#"\b(eval|assert|system|exec|popen|include|require|extract|fopen|fwrite|readfile|putenv|symlink|chmod|mail)\s*\(\s*['"$]"#,
        "a PHP function called with a string or a variable"),
    rule!(5003, "php", ALL, literals [
        "php://", "phar://", "zip://", "expect://", "glob://", "data://", "zlib://", "ogg://",
        "rar://", "ssh2.",
    ], "a PHP stream wrapper"),
    rule!(5004, "php", ALL, regex r"\$_(get|post|request|cookie|server|files|env|session)\b|\$globals\b|\$\{\s*@?(eval|system|assert|phpinfo)",
        "a PHP superglobal or variable-variable call"),
    rule!(5005, "php", ALL, regex r#"\b[oc]:\d+:"[a-z_\\][\w\\]*":\d+:\{"#,
        "a serialised PHP object"),
    rule!(5008, "php", ALL, regex r#"\b(array_map|array_filter|array_walk|array_reduce|usort|uasort|uksort|register_shutdown_function|register_tick_function|call_user_func|call_user_func_array|forward_static_call)\s*\(\s*['"](system|exec|shell_exec|passthru|popen|proc_open|assert|eval|pcntl_exec)['"]"#,
        "a PHP callback running a command"),
    rule!(5009, "php", ALL, regex r#"\(\s*(['"][a-z_]*['"]\s*\.\s*)+['"][a-z_]*['"]\s*\)\s*\("#,
        "a PHP function called by a name put together from strings"),
    rule!(5006, "php", ALL, regex r"\b(auto_prepend_file|auto_append_file|allow_url_include|disable_functions|open_basedir|safe_mode)\s*=",
        "a PHP setting"),
];
