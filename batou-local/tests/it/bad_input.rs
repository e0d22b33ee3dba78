//! The bad-input corpus: each case is refused by both binaries with its exit code, message and
//! place, and writes nothing anywhere (project, base directory and its parent, home, `/tmp`,
//! the directory outside the project that a case's symlinks point to), and the content of the
//! file outside the project appears in no output.
//!
//! A case is built with [`case`] and its builder methods; add a case by appending one to
//! [`cases`]. `batou-remote` runs with an ssh_config that sends every host to 127.0.0.1 port 9,
//! where nothing listens: a configuration error must end the run before any connection.
//!
//! Every case's stderr is pinned in one snapshot per binary (`snapshots/bad_input_*.snap`, one
//! block per case in the table's order), so that a change in any message shows in review;
//! accept a deliberate change with `INSTA_UPDATE=always cargo test -p batou-local --test it
//! bad_input` and read the diff.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::harness::{Project, run_binary_in, snapshot, workspace_binary};

/// Which binaries a case runs with.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Binary {
    Local,
    Remote,
}

/// Text that no error may ever show: serde's internal names, panics.
const NEVER: &[&str] = &[
    "untagged",
    "variant",
    "Raw",
    "panicked",
    "RUST_BACKTRACE",
    CANARY,
];

/// Content of `secret` in the directory outside the project that a case's symlinks may point
/// to: it must appear in no output.
const CANARY: &str = "outside-canary-corpus-7f3e21";

struct Case {
    name: &'static str,
    /// `environments/dev.toml`.
    env: Vec<u8>,
    files: Vec<(&'static str, Vec<u8>)>,
    /// Symlinks in the project: path and target, where `{outside}` in the target stands for
    /// a directory outside the project holding `secret` with [`CANARY`].
    symlinks: Vec<(&'static str, &'static str)>,
    /// The environment argument.
    environment: &'static str,
    /// Arguments after the environment.
    args: Vec<&'static str>,
    code: i32,
    /// Substrings of stderr: the message, the place, the hint.
    expect: Vec<&'static str>,
    /// Substrings stderr must not have.
    absent: Vec<&'static str>,
    binaries: Vec<Binary>,
}

/// A case with `env` as `environments/dev.toml`, run as `<binary> dev`, expecting exit 3.
fn case(name: &'static str, env: impl Into<Vec<u8>>) -> Case {
    Case {
        name,
        env: env.into(),
        files: Vec::new(),
        symlinks: Vec::new(),
        environment: "dev",
        args: Vec::new(),
        code: 3,
        expect: Vec::new(),
        absent: Vec::new(),
        binaries: vec![Binary::Local, Binary::Remote],
    }
}

impl Case {
    fn file(mut self, path: &'static str, data: impl Into<Vec<u8>>) -> Self {
        self.files.push((path, data.into()));
        self
    }
    /// A symlink `path` in the project to `target` (`{outside}` is replaced, see [`Case`]).
    fn symlink(mut self, path: &'static str, target: &'static str) -> Self {
        self.symlinks.push((path, target));
        self
    }
    fn environment(mut self, name: &'static str) -> Self {
        self.environment = name;
        self
    }
    fn args(mut self, args: &[&'static str]) -> Self {
        self.args.extend(args);
        self
    }
    fn code(mut self, code: i32) -> Self {
        self.code = code;
        self
    }
    fn expect(mut self, text: &'static str) -> Self {
        self.expect.push(text);
        self
    }
    fn absent(mut self, text: &'static str) -> Self {
        self.absent.push(text);
        self
    }
    fn only(mut self, binary: Binary) -> Self {
        self.binaries = vec![binary];
        self
    }
}

/// A host running `motd`, a file component, followed by `motd`'s attributes.
fn motd(attributes: &str) -> String {
    format!(
        "[hosts.localhost]\ncomponents = [\"motd\"]\n\n[components.motd]\ntype = \"file\"\npath = \"motd\"\n{attributes}"
    )
}

/// A host `web1` with `lines` (line 2 on) that runs `motd`, which has content.
fn web1(lines: &str) -> String {
    format!(
        "[hosts.web1]\n{lines}\ncomponents = [\"motd\"]\n\n[components.motd]\ntype = \"file\"\npath = \"motd\"\ncontent = \"hi\"\n"
    )
}

const MOTD: &str = r#"[hosts.localhost]
components = ["motd"]

[components.motd]
type = "file"
"#;

/// A host running `motd` (lines 1 to 7), and `[components.spare]` (line 8) with `lines`
/// from line 9, which no host runs.
fn spare(lines: &str) -> String {
    format!("{}[components.spare]\n{lines}", motd("content = \"x\"\n"))
}

/// A host running `job`, a command component (lines 4 and 5), followed by `job`'s attributes
/// from line 6.
fn job(attributes: &str) -> String {
    format!(
        "[hosts.localhost]\ncomponents = [\"job\"]\n\n[components.job]\ntype = \"command\"\n{attributes}\n"
    )
}

/// A host running `c`, a component of type `kind` (line 5), followed by `c`'s attributes
/// from line 6.
fn one(kind: &str, attributes: &str) -> String {
    format!(
        "[hosts.localhost]\ncomponents = [\"c\"]\n\n[components.c]\ntype = \"{kind}\"\n{attributes}\n"
    )
}

/// A host running `config` (a file, lines 4 to 7) and `web`, a service (lines 9 to 11), with
/// `web`'s attributes from line 12.
fn service(attributes: &str) -> String {
    format!(
        "[hosts.localhost]\ncomponents = [\"config\", \"web\"]\n\n[components.config]\ntype = \"file\"\npath = \"x\"\ncontent = \"\"\n\n[components.web]\ntype = \"service\"\nargv = [\"true\"]\n{attributes}\n"
    )
}

/// Where a case's symlinks may point: a file outside the project holding [`CANARY`].
const OUTSIDE_SECRET: &str = "{outside}/secret";

fn cases() -> Vec<Case> {
    vec![
        // TOML and the shape of the file.
        case("toml syntax error", "[hosts.localhost\ncomponents = []\n")
            .expect("error: unclosed table, expected `]`")
            .expect("environments/dev.toml:1:17"),
        case("unknown key in [environment]", "[environment]\njbos = 3\n[hosts.localhost]\n")
            .expect("unknown field `jbos`, expected one of")
            .expect("environments/dev.toml:2:1 (did you mean `jobs`?)"),
        case("wrong type of a setting", "[environment]\njobs = \"many\"\n[hosts.localhost]\n")
            .expect("invalid type: string \"many\", expected a non-negative integer in environments/dev.toml:2:8")
            .absent("usize"),
        case("negative jobs", "[environment]\njobs = -1\n[hosts.localhost]\n")
            .expect("invalid value: integer `-1`, expected a non-negative integer in environments/dev.toml:2:8")
            .absent("usize"),
        case("unknown value of a setting", "[environment]\nconnect = \"sssh\"\n[hosts.localhost]\n")
            .expect("unknown value `sssh`, expected `ssh` or `local` in environments/dev.toml:2:11 (did you mean `ssh`?)"),
        case("unknown top-level table", "[hostz.localhost]\n")
            .expect("unknown field `hostz`, expected one of `environment`, `hosts`, `groups`, `components`, `rollout` in environments/dev.toml:1:2 (did you mean `hosts`?)"),
        case("duplicate key", motd("content = \"a\"\ncontent = \"b\"\n"))
            .expect("error: duplicate key `content` in environments/dev.toml:8:1"),
        case("duplicate table", "[hosts.localhost]\n[hosts.localhost]\n")
            .expect("error: duplicate key `localhost` in environments/dev.toml:2:8"),
        case("duplicate quoted key", "[hosts.localhost]\n\"components\" = []\ncomponents = []\n")
            .expect("error: duplicate key `components` in environments/dev.toml:3:1"),
        case("non-UTF-8 environment file", &b"[hosts.localhost]\n# caf\xe9\n"[..])
            .expect("`environments/dev.toml` is not UTF-8 text: invalid byte 0xe9 in environments/dev.toml:2:6"),
        case("a very deep dotted key", format!("[hosts.localhost]\n\n{}b = 1\n", "a.".repeat(100)))
            .expect("nested too deeply")
            .expect("in environments/dev.toml:3:1"),
        case("a very deep array", format!("[hosts.localhost]\nx = {}{}\n", "[".repeat(200), "]".repeat(200)))
            .expect("error: nested too deeply: keys and values may have at most 80 levels in environments/dev.toml:2:")
            .absent("recurs"),
        case("components is not a table", "components = 1\n[hosts.localhost]\n")
            .expect("`components` must be a table in environments/dev.toml:1:14"),
        case("a component is not a table", "[hosts.localhost]\n[components]\nmotd = 1\n")
            .expect("`components.motd` must be a table of attributes in environments/dev.toml:3:8"),
        case("type is not a string", "[hosts.localhost]\ncomponents = [\"motd\"]\n[components.motd]\ntype = 1\n")
            .expect("`type` must be a string in environments/dev.toml:4:8"),
        case("host components is not a list", "[hosts.localhost]\ncomponents = \"motd\"\n")
            .expect("invalid type: string \"motd\", expected a sequence in environments/dev.toml:2:14"),
        case("relative allow_paths entry", "[environment]\nallow_paths = [\"etc\"]\n[hosts.localhost]\n")
            .expect("`allow_paths` entry `etc` must be an absolute path in environments/dev.toml:2:16"),
        // Components and their attributes.
        case("unknown attribute of a component", motd("contnet = \"hi\"\n"))
            .expect("component `motd`: unknown field `contnet`, expected one of")
            .expect("in environments/dev.toml:7:1 (did you mean `content`?)"),
        case("unknown attribute without a close name", motd("zzzzz = \"hi\"\n"))
            .expect("component `motd`: unknown field `zzzzz`, expected one of")
            .absent("did you mean"),
        case("wrong type of an attribute", motd("create_parents = \"yes\"\n"))
            .expect("component `motd`: invalid type: string \"yes\", expected a boolean in environments/dev.toml:7:18"),
        case("missing required attribute", MOTD)
            .expect("component `motd`: missing field `path` in environments/dev.toml:4:1"),
        case("unknown component name", "[hosts.localhost]\ncomponents = [\"mtod\"]\n\n[components.motd]\ntype = \"file\"\npath = \"m\"\n")
            .expect("unknown component `mtod` in environments/dev.toml:2:15 (did you mean `motd`?)"),
        case("unknown component type", "[hosts.localhost]\ncomponents = [\"motd\"]\n\n[components.motd]\ntype = \"fiel\"\n")
            .expect("unknown component type `fiel` in environments/dev.toml:5:8 (did you mean `file`?)"),
        case("component assigned twice", "[hosts.localhost]\ncomponents = [\"motd\", \"motd\"]\n\n[components.motd]\ntype = \"file\"\npath = \"m\"\n")
            .expect("component `motd` is assigned twice to host `localhost` in environments/dev.toml:2:23"),
        case("command without guard", "[hosts.localhost]\ncomponents = [\"build\"]\n\n[components.build]\ntype = \"command\"\nargv = [\"true\"]\n")
            .expect("caused by: command `true` has no guard\nhint: set `creates`, `unless` or `on_change` so that it can converge")
            .expect("in host `localhost`, component `build`"),
        case("command watching an unknown root component", "[hosts.localhost]\ncomponents = [\"reload\", \"config\"]\n\n[components.config]\ntype = \"file\"\npath = \"app.conf\"\ncontent = \"x\"\n\n[components.reload]\ntype = \"command\"\nargv = [\"true\"]\non_change = [\"confg\"]\n")
            .expect("caused by: `confg` is not a root component of host `localhost` (did you mean `config`?)")
            .expect("hint: the other root components of host `localhost` are `config`")
            .expect("in host `localhost`, component `reload`"),
        case("command watching a root component of another host (local)", "[hosts.localhost]\ncomponents = [\"reload\"]\n\n[hosts.db1]\ncomponents = [\"config\"]\n\n[components.config]\ntype = \"file\"\npath = \"app.conf\"\ncontent = \"x\"\n\n[components.reload]\ntype = \"command\"\nargv = [\"true\"]\non_change = [\"config\"]\n")
            .expect("caused by: `config` is not a root component of host `localhost`")
            .expect("hint: host `localhost` has no other root component to watch")
            .expect("in host `localhost`, component `reload`")
            .args(&["--host", "localhost"])
            .only(Binary::Local),
        case("command watching a root component of another host (remote)", "[hosts.localhost]\ncomponents = [\"reload\"]\n\n[hosts.db1]\ncomponents = [\"config\"]\n\n[components.config]\ntype = \"file\"\npath = \"app.conf\"\ncontent = \"x\"\n\n[components.reload]\ntype = \"command\"\nargv = [\"true\"]\non_change = [\"config\"]\n")
            .expect("caused by: `config` is not a root component of host `localhost`")
            .expect("hint: host `localhost` has no other root component to watch")
            .expect("in host `localhost`, component `reload`")
            .only(Binary::Remote),
        case("command watching itself", "[hosts.localhost]\ncomponents = [\"reload\"]\n\n[components.reload]\ntype = \"command\"\nargv = [\"true\"]\non_change = [\"reload\"]\n")
            .expect("caused by: `reload` cannot watch itself for changes")
            .expect("in host `localhost`, component `reload`"),
        case("command with an empty on_change", "[hosts.localhost]\ncomponents = [\"reload\"]\n\n[components.reload]\ntype = \"command\"\nargv = [\"true\"]\non_change = []\n")
            .expect("caused by: `on_change` must name a root component")
            .expect("in host `localhost`, component `reload`"),
        case("missing source file", motd("source = \"files/motd\"\n"))
            .expect("caused by: project file `files/motd` does not exist")
            .expect("in host `localhost`, component `motd`"),
        case("path outside what the component may touch", "[hosts.localhost]\ncomponents = [\"motd\"]\n\n[components.motd]\ntype = \"file\"\npath = \"/etc/batou-test-motd\"\ncontent = \"x\"\n")
            .expect("caused by: path `/etc/batou-test-motd` is outside what this deployment may change")
            .expect("in host `localhost`, component `motd`"),
        case("relative path escaping the base directory", "[hosts.localhost]\ncomponents = [\"motd\"]\n\n[components.motd]\ntype = \"file\"\npath = \"../../../outside\"\ncontent = \"x\"\n")
            .expect("caused by: path `../../../outside` is outside what this deployment may change")
            .expect("in host `localhost`, component `motd`"),
        // Modes.
        case("decimal mode with octal digits", motd("content = \"x\"\nmode = 644\n"))
            .expect("component `motd`: `mode = 644` is the decimal number 644 (0o1204 in octal) in environments/dev.toml:8:8")
            .expect("hint: did you mean 0o644?"),
        case("decimal mode of a directory", "[hosts.localhost]\ncomponents = [\"d\"]\n[components.d]\ntype = \"directory\"\npath = \"d\"\nmode = 755\n")
            .expect("`mode = 755` is the decimal number 755")
            .expect("in environments/dev.toml:6:8")
            .expect("hint: did you mean 0o755?"),
        case("negative mode", motd("content = \"x\"\nmode = -1\n"))
            .expect("component `motd`: mode must be between 0o0 and 0o7777, not -1 in environments/dev.toml:8:8"),
        case("mode too large", motd("content = \"x\"\nmode = 0o17777\n"))
            .expect("component `motd`: mode must be between 0o0 and 0o7777, not 0o17777 in environments/dev.toml:8:8"),
        case("negative string mode", motd("content = \"x\"\nmode = \"-644\"\n"))
            .expect("component `motd`: mode must be between 0o0 and 0o7777, not `-644`"),
        case("string mode with a non-octal digit", motd("content = \"x\"\nmode = \"0649\"\n"))
            .expect("component `motd`: invalid mode `0649`: expected octal digits like \"0640\" or 0o640 in environments/dev.toml:8:8"),
        case("boolean mode", motd("content = \"x\"\nmode = true\n"))
            .expect("component `motd`: invalid type: boolean `true`, expected a mode like 0o640 or \"0640\" in environments/dev.toml:8:8"),
        case("float mode", motd("content = \"x\"\nmode = 6.44\n"))
            .expect("component `motd`: invalid mode 6.44: expected octal digits"),
        case("mode with a leading zero", motd("content = \"x\"\nmode = 0644\n"))
            .expect("environments/dev.toml:8:8")
            .expect("hint: TOML integers have no leading zeros; write an octal mode as 0o644 or \"0644\""),
        // Hosts: what ends up on the ssh command line.
        case("address that looks like an ssh option", web1("address = \"-oProxyCommand=touch /tmp/batou-pwned\""))
            .expect("`hosts.web1.address` `-oProxyCommand=touch /tmp/batou-pwned` starts with `-` in environments/dev.toml:2:11")
            .expect("hint: ssh would read it as an option"),
        case("address with a space", web1("address = \"web1 -p 2\""))
            .expect("`hosts.web1.address` `web1 -p 2` contains the character ` ` in environments/dev.toml:2:11"),
        case("address with a newline", web1("address = \"web1\\nHost *\""))
            .expect("`hosts.web1.address` `web1\\nHost *` contains the character `\\n` in environments/dev.toml:2:11"),
        case("address with a tab", web1("address = \"web1\\t\""))
            .expect("contains the character `\\t` in environments/dev.toml:2:11"),
        case("empty address", web1("address = \"\""))
            .expect("`hosts.web1.address` is empty in environments/dev.toml:2:11"),
        case("user that looks like an option", web1("user = \"-oProxyCommand=x\""))
            .expect("`hosts.web1.user` `-oProxyCommand=x` starts with `-` in environments/dev.toml:2:8"),
        case("user with a space", web1("user = \"root x\""))
            .expect("`hosts.web1.user` `root x` contains the character ` ` in environments/dev.toml:2:8"),
        case("user with a control character", web1("user = \"ro\\u0007ot\""))
            .expect("`hosts.web1.user` `ro\\u{7}ot` contains the character `\\u{7}` in environments/dev.toml:2:8"),
        case("port zero", web1("port = 0"))
            .expect("`hosts.web1.port` is 0: a port must be between 1 and 65535 in environments/dev.toml:2:8"),
        case("port too large", web1("port = 65536"))
            .expect("`hosts.web1.port` is 65536: a port must be between 1 and 65535 in environments/dev.toml:2:8"),
        case("negative port", web1("port = -22"))
            .expect("`hosts.web1.port` is -22: a port must be between 1 and 65535 in environments/dev.toml:2:8"),
        case("port as a string", web1("port = \"22\""))
            .expect("invalid type: string \"22\", expected an integer in environments/dev.toml:2:8")
            .absent("i64"),
        case("host name that looks like an option", "[hosts.\"-oProxyCommand=x\"]\ncomponents = [\"file\"]\n")
            .expect("host name `-oProxyCommand=x` starts with `-` in environments/dev.toml:1:8")
            .expect("hint: without `address`, the host's name is its address"),
        case("misspelt host key", web1("adress = \"10.0.0.1\""))
            .expect("unknown field `adress`, expected one of")
            .expect("in environments/dev.toml:2:1 (did you mean `address`?)"),
        // Templates.
        case("template syntax error", motd("template = \"motd.j2\"\n"))
            .file("motd.j2", "Hello\n{% if %}\n")
            .expect("caused by: template `motd.j2` line 2: syntax error")
            .expect("cannot configure `motd` in host `localhost`, component `motd`"),
        case("undefined template variable", motd("template = \"motd.j2\"\n"))
            .file("motd.j2", "Hello\n{{ host.nmae }}\n")
            .expect("caused by: template `motd.j2` line 2: undefined value at `host.nmae` (did you mean `host.name`?)")
            .expect("in host `localhost`, component `motd`"),
        case("undefined template variable close to a var", motd("template = \"motd.j2\"\nvars = { port = 8080 }\n"))
            .file("motd.j2", "listen {{ prot }}\n")
            .expect("caused by: template `motd.j2` line 1: undefined value at `prot` (did you mean `port`?)"),
        case("unknown filter in a template file", motd("template = \"motd.j2\"\n"))
            .file("motd.j2", "{{ host.name | uppper }}\n")
            .expect("caused by: template `motd.j2` line 1: unknown filter")
            .expect("(did you mean `upper`?)"),
        case("non-UTF-8 template file", motd("template = \"motd.j2\"\n"))
            .file("motd.j2", &b"caf\xe9\n"[..])
            .expect("template `motd.j2` is not UTF-8 text")
            .expect("in host `localhost`, component `motd`"),
        case("undefined variable in an attribute template", motd("content = \"{{ hots.name }}\"\n"))
            .expect("cannot render attribute of `motd` for host `localhost` in environments/dev.toml:7:11")
            .expect("caused by: template `components.motd` line 1: undefined value at `hots.name` (did you mean `host.name`?)"),
        case("misspelt workdir in an attribute template", motd("content = \"{{ workdri }}\"\n"))
            .expect("in environments/dev.toml:7:11")
            .expect("undefined value at `workdri` (did you mean `workdir`?)"),
        case("unknown filter in an attribute template", motd("content = \"{{ host.name | lowre }}\"\n"))
            .expect("in environments/dev.toml:7:11")
            .expect("unknown filter")
            .expect("(did you mean `lower`?)"),
        // Components that no host runs are checked too.
        case("unknown attribute of a component no host runs", spare("type = \"file\"\npath = \"x\"\ncontnet = \"x\"\n"))
            .expect("component `spare`: unknown field `contnet`")
            .expect("(`spare` is not assigned to any host) in environments/dev.toml:11:1 (did you mean `content`?)"),
        case("template syntax error in a component no host runs", spare("type = \"file\"\npath = \"x\"\ncontent = \"{% if %}\"\n"))
            .expect("invalid template in an attribute of `spare` (`spare` is not assigned to any host) in environments/dev.toml:11:11")
            .expect("caused by: template `components.spare` line 1: syntax error"),
        case("decimal mode in a component no host runs", spare("type = \"file\"\npath = \"x\"\nmode = 600\n"))
            .expect("`mode = 600` is the decimal number 600")
            .expect("in environments/dev.toml:11:8"),
        case("missing attribute of a component no host runs", spare("type = \"directory\"\n"))
            .expect("component `spare`: missing field `path` (`spare` is not assigned to any host) in environments/dev.toml:8:1"),
        // Secrets.
        case("secrets file that is not age", motd("content = \"x\"\n"))
            .file("secrets/dev.age", "[components.motd]\npassword = \"hunter2\"\n")
            .expect("`secrets/dev.age` is not an age-encrypted file: it starts with neither")
            .expect("hint: create or rewrite it with `batou-remote secrets create <environment>`")
            .absent("hunter2")
            .absent("tampered"),
        case("empty secrets file", motd("content = \"x\"\n"))
            .file("secrets/dev.age", "")
            .expect("`secrets/dev.age` is not an age-encrypted file: it is empty"),
        case("damaged secrets file", motd("content = \"x\"\n"))
            .file("secrets/dev.age", "-----BEGIN AGE ENCRYPTED FILE-----\nnot base64 !!\n-----END AGE ENCRYPTED FILE-----\n")
            .expect("secrets/dev.age"),
        // Environment names.
        case("environment name reaching outside environments/", "[hosts.localhost]\n")
            .file("other/evil.toml", motd("content = \"evil\"\n"))
            .environment("../other/evil")
            .expect("invalid environment name `../other/evil`: it contains `/`")
            .expect("hint: an environment is named by its file `environments/<name>.toml`"),
        case("bad environment name in a deployment repository that is a Cargo package", "[hosts.localhost]\n")
            .file("Cargo.toml", "[package]\nname = \"shop\"\nversion = \"0.1.0\"\nedition = \"2024\"\n")
            .file("src/main.rs", "fn main() {}\n")
            .environment("../evil")
            .expect("invalid environment name `../evil`: it contains `/`"),
        case("environment name through environments/", "[hosts.localhost]\n")
            .environment("dev/../dev")
            .expect("invalid environment name `dev/../dev`: it contains `/`"),
        case("hidden environment name", "[hosts.localhost]\n")
            .file("environments/.hidden.toml", motd("content = \"x\"\n"))
            .environment(".hidden")
            .expect("invalid environment name `.hidden`: it starts with `.`"),
        case("environment name with a space", "[hosts.localhost]\n")
            .environment("de v")
            .expect("invalid environment name `de v`: it contains the character ` `"),
        case("empty environment name", "[hosts.localhost]\n")
            .environment("")
            .expect("invalid environment name ``: it is empty"),
        case("absolute environment name", "[hosts.localhost]\n")
            .environment("/etc/passwd")
            .expect("invalid environment name `/etc/passwd`: it contains `/`"),
        case("unknown environment", "[hosts.localhost]\n")
            .environment("prod")
            .expect("environment `prod` not found: `environments/prod.toml` does not exist")
            .expect("hint: environments here: dev"),
        // The command line.
        case("environment name that looks like an option", "[hosts.localhost]\n")
            .environment("-x")
            .code(2)
            .expect("error: unexpected argument '-x' found"),
        case("unknown option", "[hosts.localhost]\n")
            .args(&["--hots", "web1"])
            .code(2)
            .expect("error: unexpected argument '--hots' found"),
        case("unknown host", "[hosts.localhost]\n[hosts.web1]\n")
            .args(&["--host", "web2"])
            .only(Binary::Local)
            .expect("unknown host `web2` in environment `dev` in environments/dev.toml (did you mean `web1`?)")
            .expect("hint: hosts: localhost, web1"),
        case("unknown host in --hosts", motd("content = \"x\"\n"))
            .args(&["--hosts", "localhots"])
            .only(Binary::Remote)
            .expect("unknown host `localhots` in `--hosts` for environment `dev` (did you mean `localhost`?)"),
        // Host groups and `--hosts` selections.
        case("unknown host in a group", format!("{}\n[groups]\nweb = [\"web1\", \"wbe2\"]\n", web1("address = \"192.0.2.1\"").replace("[hosts.web1]", "[hosts.web2]\n[hosts.web1]")))
            .expect("unknown host `wbe2` in group `web` in environments/dev.toml:")
            .expect("(did you mean `web2`?)")
            .expect("hint: hosts: web1, web2"),
        case("group named like a host", "[hosts.web1]\n[groups]\nweb1 = [\"web1\"]\n")
            .expect("group `web1` has the name of host `web1` in environments/dev.toml:3:1")
            .expect("hint: `--hosts` could not tell them apart: rename the group"),
        case("nested group", "[hosts.web1]\n[groups]\nweb = [\"web1\"]\nall = [\"web\"]\n")
            .expect("unknown host `web` in group `all` in environments/dev.toml:4:8")
            .expect("hint: `web` is a group: groups do not nest, list its hosts instead"),
        case("group that is not a list", "[hosts.web1]\n[groups]\nweb = \"web1\"\n")
            .expect("in environments/dev.toml:3:7"),
        case("unknown group in --hosts", format!("{}[groups]\nlocal = [\"localhost\"]\n", motd("content = \"x\"\n")))
            .args(&["--hosts", "locl"])
            .only(Binary::Remote)
            .expect("unknown host or group `locl` in `--hosts` for environment `dev` (did you mean `local`?)")
            .expect("hint: hosts with components: localhost; groups: local"),
        case("unknown exclusion in --hosts", motd("content = \"x\"\n"))
            .args(&["--hosts", "!localhots"])
            .only(Binary::Remote)
            .expect("unknown host `localhots` in `--hosts` for environment `dev` (did you mean `localhost`?)"),
        case("--hosts that selects nothing", motd("content = \"x\"\n"))
            .args(&["--hosts", "!localhost"])
            .only(Binary::Remote)
            .expect("`--hosts !localhost` selects no host of environment `dev`"),
        case("unknown group in --hosts of a verb", format!("{}[groups]\nlocal = [\"localhost\"]\n", motd("content = \"x\"\n")))
            .args(&["service", "status", "--hosts", "!locl"])
            .only(Binary::Remote)
            .expect("unknown host or group `locl` in `--hosts` for environment `dev` (did you mean `local`?)"),
        case("check with --hosts", motd("content = \"x\"\n"))
            .args(&["check", "--hosts", "localhost"])
            .only(Binary::Remote)
            .code(2)
            .expect("`--hosts` does not apply to `check` and `graph`, which contact no host and take every one"),
        case("--detailed-exitcode without --dry-run", motd("content = \"x\"\n"))
            .args(&["--detailed-exitcode"])
            .code(64)
            .expect("the following required arguments were not provided:")
            .expect("--dry-run"),
        // Commands: values no program can receive.
        case("NUL byte in argv", job("argv = [\"echo\", \"a\\u0000b\"]\ncreates = \"x\""))
            .expect("error: cannot configure `job` in host `localhost`, component `job`")
            .expect("caused by: `argv` element 2 contains a NUL byte, which no command can receive"),
        case("NUL byte in unless", job("argv = [\"true\"]\nunless = [\"test\", \"-e\", \"a\\u0000b\"]"))
            .expect("error: cannot configure `job` in host `localhost`, component `job`")
            .expect("caused by: `unless` element 3 contains a NUL byte, which no command can receive"),
        case("NUL byte in creates", job("argv = [\"true\"]\ncreates = \"a\\u0000b\""))
            .expect("error: cannot configure `job` in host `localhost`, component `job`")
            .expect("caused by: `creates` contains a NUL byte, which no command can receive"),
        case("NUL byte in cwd", job("argv = [\"true\"]\ncreates = \"x\"\ncwd = \"a\\u0000b\""))
            .expect("error: cannot configure `job` in host `localhost`, component `job`")
            .expect("caused by: `cwd` contains a NUL byte, which no command can receive"),
        case("NUL byte in an env value", job("argv = [\"true\"]\ncreates = \"x\"\nenv = { GREETING = \"a\\u0000b\" }"))
            .expect("error: cannot configure `job` in host `localhost`, component `job`")
            .expect("caused by: `env` value of `GREETING` contains a NUL byte, which no command can receive"),
        // Not `A\0B`: the snapshot filters would read `0B` as a size.
        case("NUL byte in an env key", job("argv = [\"true\"]\ncreates = \"x\"\nenv = { \"K\\u0000EY\" = \"x\" }"))
            .expect("error: cannot configure `job` in host `localhost`, component `job`")
            .expect("caused by: `env` key `K\\0EY` contains a NUL byte, which no command can receive"),
        case("env key with =", job("argv = [\"true\"]\ncreates = \"x\"\nenv = { \"A=B\" = \"x\" }"))
            .expect("error: cannot configure `job` in host `localhost`, component `job`")
            .expect("caused by: `env` key `A=B` is not a variable name: it must not contain `=`"),
        case("empty env key", job("argv = [\"true\"]\ncreates = \"x\"\nenv = { \"\" = \"x\" }"))
            .expect("error: cannot configure `job` in host `localhost`, component `job`")
            .expect("caused by: an `env` key is empty: a variable needs a name"),
        // Paths, link targets and names no host accepts.
        case("NUL byte in a file's path", one("file", "path = \"a\\u0000b\"\ncontent = \"x\""))
            .expect("error: cannot configure `c` in host `localhost`, component `c`")
            .expect("caused by: `path` contains a NUL byte (`a\\0b`), which no host accepts"),
        case("NUL byte in a directory's path", one("directory", "path = \"d\\u0000\""))
            .expect("error: cannot configure `c` in host `localhost`, component `c`")
            .expect("caused by: `path` contains a NUL byte (`d\\0`), which no host accepts"),
        case("NUL byte in a symlink's path", one("symlink", "path = \"l\\u0000\"\ntarget = \"t\""))
            .expect("error: cannot configure `c` in host `localhost`, component `c`")
            .expect("caused by: `path` contains a NUL byte (`l\\0`), which no host accepts"),
        case("NUL byte in a symlink's target", one("symlink", "path = \"l\"\ntarget = \"t\\u0000\""))
            .expect("error: cannot configure `c` in host `localhost`, component `c`")
            .expect("caused by: `target` contains a NUL byte (`t\\0`), which no host accepts"),
        case("NUL byte in an owner", one("file", "path = \"a\"\ncontent = \"x\"\nowner = \"ro\\u0000ot\""))
            .expect("error: cannot configure `c` in host `localhost`, component `c`")
            .expect("caused by: `owner` contains a NUL byte (`ro\\0ot`), which no host accepts"),
        case("NUL byte in a group", one("file", "path = \"a\"\ncontent = \"x\"\ngroup = \"ro\\u0000ot\""))
            .expect("error: cannot configure `c` in host `localhost`, component `c`")
            .expect("caused by: `group` contains a NUL byte (`ro\\0ot`), which no host accepts"),
        case("NUL byte in a source file name", one("file", "path = \"a\"\nsource = \"a\\u0000b\""))
            .file("a", "a\n")
            .expect("error: cannot configure `c` in host `localhost`, component `c`")
            .expect("caused by: project file name `a\\0b` contains a NUL byte"),
        case("NUL byte in a template file name", one("file", "path = \"a\"\ntemplate = \"a\\u0000b\""))
            .file("a", "a\n")
            .expect("error: cannot configure `c` in host `localhost`, component `c`")
            .expect("caused by: template name `a\\0b` contains a NUL byte"),
        case("NUL byte in a synced tree's source", one("directory", "path = \"d\"\nsource = \"t\\u0000\""))
            .file("t/a", "a\n")
            .expect("error: cannot configure `c` in host `localhost`, component `c`")
            .expect("caused by: project file name `t\\0` contains a NUL byte"),
        // A file needs content.
        case("file without content", motd(""))
            .expect("error: component `motd`: a file needs one of `content`, `template`, `source`, `secret` and `data` in environments/dev.toml:4:1")
            .expect("hint: write `content = \"\"` for an empty file"),
        case("file with a mode but without content", motd("mode = 0o600\n"))
            .expect("a file needs one of `content`, `template`, `source`, `secret` and `data` in environments/dev.toml:4:1"),
        case("file without content that no host runs", spare("type = \"file\"\npath = \"x\"\n"))
            .expect("a file needs one of `content`, `template`, `source`, `secret` and `data`")
            .expect("in environments/dev.toml:8:1"),
        // Project files are confined by their resolved path.
        case("source that is a symlink out of the project", motd("source = \"link\"\n"))
            .symlink("link", OUTSIDE_SECRET)
            .expect("error: cannot configure `motd` in host `localhost`, component `motd`")
            .expect("caused by: project file `link` lies outside the project: it resolves to `/tmp/")
            .expect("` through a symlink"),
        case("template that is a symlink out of the project", motd("template = \"link\"\n"))
            .symlink("link", OUTSIDE_SECRET)
            .expect("error: cannot configure `motd` in host `localhost`, component `motd`")
            .expect("template `link` lies outside the project: it resolves to `/tmp/"),
        case("include of a symlink out of the project", motd("template = \"t.j2\"\n"))
            .file("t.j2", "{% include \"link\" %}\n")
            .symlink("link", OUTSIDE_SECRET)
            .expect("in host `localhost`, component `motd`")
            .expect("template `link` lies outside the project: it resolves to `/tmp/"),
        case("import of a symlink out of the project", motd("template = \"t.j2\"\n"))
            .file("t.j2", "{% import \"link\" as m %}{{ m.x }}\n")
            .symlink("link", OUTSIDE_SECRET)
            .expect("in host `localhost`, component `motd`")
            .expect("template `link` lies outside the project: it resolves to `/tmp/"),
        case("include ignore missing of a symlink out of the project", motd("template = \"t.j2\"\n"))
            .file("t.j2", "{% include \"link\" ignore missing %}\n")
            .symlink("link", OUTSIDE_SECRET)
            .expect("in host `localhost`, component `motd`")
            .expect("template `link` lies outside the project: it resolves to `/tmp/"),
        case("source below a symlinked directory out of the project", motd("source = \"files/secret\"\n"))
            .symlink("files", "{outside}")
            .expect("in host `localhost`, component `motd`")
            .expect("project file `files/secret` lies outside the project: it resolves to `/tmp/"),
        case("source through a chain of symlinks out of the project", motd("source = \"link\"\n"))
            .symlink("link", "link2")
            .symlink("link2", OUTSIDE_SECRET)
            .expect("in host `localhost`, component `motd`")
            .expect("project file `link` lies outside the project: it resolves to `/tmp/"),
        case("synced tree that is a symlink out of the project", one("directory", "path = \"htdocs\"\nsource = \"tree\""))
            .symlink("tree", "{outside}")
            .expect("error: cannot configure `c` in host `localhost`, component `c`")
            .expect("project file `tree` lies outside the project: it resolves to `/tmp/"),
        case("include of a path outside the project", motd("template = \"t.j2\"\n"))
            .file("t.j2", "{% include \"../../etc/passwd\" %}\n")
            .expect("in host `localhost`, component `motd`")
            .expect("template `../../etc/passwd` lies outside the project")
            .absent("not found")
            .absent("non-existing")
            .absent("root:x:0:0"),
        case("absolute source outside the project", motd("source = \"/etc/passwd\"\n"))
            .expect("in host `localhost`, component `motd`")
            .expect("project file `/etc/passwd` lies outside the project")
            .absent("root:x:0:0"),
        // Services.
        case("unknown service manager", service("manager = \"sytemd\""))
            .expect("error: component `web`: unknown value `sytemd`, expected `runit` or `systemd` in environments/dev.toml:12:11 (did you mean `systemd`?)"),
        case("unknown restart_on name", service("restart_on = [\"confg\"]"))
            .expect("error: cannot configure `web` in host `localhost`, component `web`")
            .expect("caused by: `confg` is not a root component of host `localhost` (did you mean `config`?)")
            .expect("hint: the other root components of host `localhost` are `config`"),
        case("bad health spec", service("health = { htp = \"http://127.0.0.1:8080/\" }"))
            .expect("unknown field `htp`, expected one of `http`, `status`, `tcp`, `command`, `within`, `stable` in environments/dev.toml:12:12 (did you mean `http`?)"),
        case("health URL that is not http", service("health = { http = \"https://127.0.0.1:8443/\" }"))
            .expect("health URL `https://127.0.0.1:8443/` is https: only `http://` URLs can be probed")
            .expect("in environments/dev.toml:12:10"),
        case("bad duration", service("health = { http = \"http://127.0.0.1:8080/\", within = \"20x\" }"))
            .expect("invalid duration `20x`")
            .expect("write a number and a unit, e.g. `20s`, `500ms` or `1m` in environments/dev.toml:12:"),
        case("duration without a unit", service("health = { tcp = \"127.0.0.1:8080\", stable = \"3\" }"))
            .expect("duration `3` has no unit")
            .expect("in environments/dev.toml:12:"),
        case("service directory outside allow_paths", service("service_dir = \"/etc/service\""))
            .expect("caused by: `service_dir` `/etc/service` is not a path this deployment may change")
            .expect("hint: add `/etc/service` to `allow_paths` in the environment's `[environment]` table"),
    ]
}

/// Entries of `/tmp` that a run of ours could have made (`batou-*`), leaving out the test
/// harness's own projects.
fn tmp_entries() -> BTreeSet<PathBuf> {
    std::fs::read_dir("/tmp")
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            name.contains("batou") && !name.starts_with("batou-it")
        })
        .collect()
}

/// Runs one case with one binary: its snapshot block (name, exit code, stderr), or the
/// failure's description.
fn run_case(case: &Case, binary: Binary, path: &Path) -> Result<String, String> {
    let p = Project::new();
    p.file_bytes("environments/dev.toml", &case.env);
    for (file, data) in &case.files {
        p.file_bytes(file, data);
    }
    let outside = tempfile::Builder::new()
        .prefix("batou-it-outside")
        .tempdir()
        .unwrap();
    std::fs::write(outside.path().join("secret"), CANARY).unwrap();
    for (link, target) in &case.symlinks {
        let target = target.replace("{outside}", &outside.path().to_string_lossy());
        let link = p.path(link);
        std::fs::create_dir_all(link.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(target, link).unwrap();
    }
    let home = outside.path().join("home");
    std::fs::create_dir(&home).unwrap();
    let ssh_config = outside.path().join("ssh_config");
    std::fs::write(&ssh_config, "Host *\n  HostName 127.0.0.1\n  Port 9\n").unwrap();

    let mut args: Vec<&OsStr> = Vec::new();
    if binary == Binary::Remote {
        args.extend([
            OsStr::new("--ssh-config"),
            ssh_config.as_os_str(),
            OsStr::new("--connect-timeout"),
            OsStr::new("1"),
        ]);
    }
    args.push(OsStr::new(case.environment));
    args.extend(case.args.iter().map(OsStr::new));

    // Another process on this machine may create `/tmp/batou-*` at any time; a case fails
    // on new entries only when they appear in every one of three runs.
    let mut attempts = 0;
    loop {
        attempts += 1;
        let project_before = snapshot(p.root());
        let home_before = snapshot(&home);
        let outside_before = snapshot(outside.path());
        let tmp_before = tmp_entries();
        let out = run_binary_in(path, p.root(), &home, &args, Duration::from_secs(60));
        let new_tmp: Vec<PathBuf> = tmp_entries().difference(&tmp_before).cloned().collect();

        let mut problems = Vec::new();
        if out.code != case.code {
            problems.push(format!("exit {} (want {})", out.code, case.code));
        }
        for want in &case.expect {
            if !out.stderr.contains(want) {
                problems.push(format!("stderr lacks {want:?}"));
            }
        }
        for never in case.absent.iter().chain(NEVER) {
            if out.stderr.contains(never) {
                problems.push(format!("stderr has {never:?}"));
            }
        }
        if snapshot(p.root()) != project_before {
            problems.push("the project (the local base directory) changed".into());
        }
        if snapshot(&home) != home_before {
            problems.push("the home directory (the remote base directory) changed".into());
        } else if snapshot(outside.path()) != outside_before {
            problems.push("the directory outside the project changed".into());
        }
        if !out.stdout.is_empty() {
            problems.push(format!("stdout is not empty: {}", out.stdout));
        }
        if problems.is_empty() && !new_tmp.is_empty() && attempts < 3 {
            continue;
        }
        if !new_tmp.is_empty() {
            problems.push(format!("new entries in /tmp: {new_tmp:?}"));
        }
        if problems.is_empty() {
            return Ok(format!(
                "### {}\nexit {}\n{}",
                case.name, out.code, out.stderr
            ));
        }
        return Err(format!(
            "case `{}` with {binary:?}: {}\n--- stderr ---\n{}",
            case.name,
            problems.join("; "),
            out.stderr
        ));
    }
}

/// Runs every case for `binary`, then compares their messages with the snapshot
/// `snapshots/<snapshot_name>.snap`, one block per case in the table's order.
fn run_corpus(binary: Binary, path: &Path, snapshot_name: &str) {
    let cases = cases();
    let mut names = BTreeSet::new();
    for case in &cases {
        assert!(names.insert(case.name), "two cases called `{}`", case.name);
    }
    let mut blocks = Vec::new();
    let mut failures = Vec::new();
    for case in cases.iter().filter(|c| c.binaries.contains(&binary)) {
        match run_case(case, binary, path) {
            Ok(block) => blocks.push(block),
            Err(failure) => failures.push(failure),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    batou_test_support::assert_output_snapshot!(snapshot_name, blocks.join("\n"));
}

#[test]
fn the_corpus_is_large_enough() {
    let cases = cases();
    for binary in [Binary::Local, Binary::Remote] {
        let n = cases
            .iter()
            .filter(|c| c.binaries.contains(&binary))
            .count();
        assert!(n >= 60, "{binary:?} has only {n} cases");
    }
}

#[test]
fn bad_input_is_refused_by_batou_local_with_its_place_and_touches_nothing() {
    run_corpus(
        Binary::Local,
        Path::new(env!("CARGO_BIN_EXE_batou-local")),
        "bad_input_batou_local",
    );
}

#[test]
fn bad_input_is_refused_by_batou_remote_with_its_place_and_touches_nothing() {
    run_corpus(
        Binary::Remote,
        &workspace_binary("batou-remote"),
        "bad_input_batou_remote",
    );
}

#[test]
fn invalid_configuration_in_json_mode_is_an_error_event() {
    let p = Project::new();
    p.env("dev", MOTD);
    let out = p.run(&["dev", "--json"]);
    assert_eq!(out.code, 3);
    let events = out.events();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["event"], "error");
    assert_eq!(events[0]["kind"], "invalid_configuration");
}

#[test]
fn several_hosts_need_a_choice() {
    let p = Project::new();
    p.env("dev", "[hosts.web1]\n[hosts.web2]\n");
    let out = p.run(&["dev"]);
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("hint: choose one with `--host`: web1, web2"),
        "{}",
        out.stderr
    );
}

#[test]
fn no_project_is_an_error_with_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let out = crate::harness::run_binary(env!("CARGO_BIN_EXE_batou-local"), dir.path(), &["dev"]);
    assert_eq!(out.code, 3);
    assert!(
        out.stderr.contains("no deployment repository here"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("hint: run in a deployment repository or pass `--project DIR`")
    );
}
