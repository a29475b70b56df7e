//! The machine's apt sources, read from both of apt's formats, and their source-package
//! (`deb-src`) counterparts for the machine's own release: setup fetches a Debian source package
//! from wherever this machine already gets its Debian packages, naming no archive itself.

/// One enabled apt source of binary or source packages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub uris: Vec<String>,
    pub suites: Vec<String>,
    pub components: Vec<String>,
    /// The keyring (a path or an inline key block) the archive's index is checked with.
    pub signed_by: Option<String>,
}

/// `sources.list` lines: `deb [option=value ...] URI SUITE COMPONENT...`.
pub fn parse_one_line(text: &str) -> Vec<Source> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Source> {
    let line = line.split('#').next()?.trim();
    let rest = line
        .strip_prefix("deb-src ")
        .or_else(|| line.strip_prefix("deb "))?
        .trim_start();
    let (options, rest) = match rest.strip_prefix('[') {
        Some(bracketed) => bracketed.split_once(']')?,
        None => ("", rest),
    };
    let mut words = rest.split_whitespace().map(str::to_string);
    let uri = words.next()?;
    let suite = words.next()?;
    let signed_by = options
        .split_whitespace()
        .find_map(|o| o.strip_prefix("signed-by="))
        .map(str::to_string);
    Some(Source {
        uris: vec![uri],
        suites: vec![suite],
        components: words.collect(),
        signed_by,
    })
}

/// deb822 `.sources` stanzas, blank-line separated; `Enabled: no` stanzas are left out.
pub fn parse_deb822(text: &str) -> Vec<Source> {
    stanzas(text).iter().filter_map(|s| stanza_source(s)).collect()
}

/// Each stanza as (field, value) pairs, continuation lines kept in the value.
fn stanzas(text: &str) -> Vec<Vec<(String, String)>> {
    let mut all: Vec<Vec<(String, String)>> = vec![Vec::new()];
    for line in text.lines() {
        if line.trim().is_empty() {
            all.push(Vec::new());
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let stanza = all.last_mut().expect("never empty");
        if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = stanza.last_mut() {
                value.push('\n');
                value.push_str(line);
            }
        } else if let Some((field, value)) = line.split_once(':') {
            stanza.push((field.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }
    all.retain(|s| !s.is_empty());
    all
}

fn stanza_source(stanza: &[(String, String)]) -> Option<Source> {
    let field = |name: &str| stanza.iter().find(|(f, _)| f == name).map(|(_, v)| v.as_str());
    let words = |name: &str| -> Vec<String> {
        field(name)
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    let types = words("types");
    let enabled = field("enabled").is_none_or(|v| !v.eq_ignore_ascii_case("no"));
    let packages = types.iter().any(|t| t == "deb" || t == "deb-src");
    (enabled && packages).then(|| Source {
        uris: words("uris"),
        suites: words("suites"),
        components: words("components"),
        signed_by: field("signed-by").map(str::to_string),
    })
}

/// deb822 stanzas of `deb-src` for every source that serves `codename` (the suite itself and its
/// `codename-*` suites: updates, security, backports), in the order given, without repeats.
pub fn source_stanzas(sources: &[Source], codename: &str) -> Vec<String> {
    let mut stanzas: Vec<String> = Vec::new();
    for source in sources {
        let suites: Vec<&str> = source
            .suites
            .iter()
            .map(String::as_str)
            .filter(|s| *s == codename || s.strip_prefix(codename).is_some_and(|rest| rest.starts_with('-')))
            .collect();
        if suites.is_empty() || source.uris.is_empty() || source.components.is_empty() {
            continue;
        }
        let mut stanza = format!(
            "Types: deb-src\nURIs: {}\nSuites: {}\nComponents: {}\n",
            source.uris.join(" "),
            suites.join(" "),
            source.components.join(" ")
        );
        if let Some(keyring) = &source.signed_by {
            stanza += &format!("Signed-By: {keyring}\n");
        }
        if !stanzas.contains(&stanza) {
            stanzas.push(stanza);
        }
    }
    stanzas
}

/// deb822 stanzas of binary packages (`deb`) from other Debian releases' `suites` (bullseye,
/// trixie-backports, sid, ...), found where this machine finds `codename`: `*-security` suites
/// where its `codename-security` comes from, the others where `codename` itself does, each with
/// that source's keyring. A suite with no such source is left out.
pub fn other_release_stanzas(sources: &[Source], codename: &str, suites: &[&str]) -> Vec<String> {
    let serving = |suite: &str| sources.iter().find(|s| s.suites.iter().any(|x| x == suite));
    let archive = serving(codename);
    let security = serving(&format!("{codename}-security"));
    suites
        .iter()
        .filter_map(|suite| {
            let source = if suite.ends_with("-security") {
                security
            } else {
                archive
            }?;
            let mut stanza = format!(
                "Types: deb\nURIs: {}\nSuites: {suite}\nComponents: main\n",
                source.uris.join(" ")
            );
            if let Some(keyring) = &source.signed_by {
                stanza += &format!("Signed-By: {keyring}\n");
            }
            Some(stanza)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEB822: &str = "\
Types: deb
# a snapshot of this archive
URIs: http://archive.example/debian
Suites: bookworm bookworm-updates
Components: main contrib
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://security.example/debian-security
Suites: bookworm-security
Components: main

Types: deb
Enabled: no
URIs: http://disabled.example/debian
Suites: bookworm
Components: main

Types: deb
URIs: http://vendor.example/node
Suites: nodistro
Components: main
";

    #[test]
    fn deb822_stanzas_become_deb_src_for_the_release_and_its_suites() {
        let stanzas = source_stanzas(&parse_deb822(DEB822), "bookworm");
        assert_eq!(
            stanzas,
            [
                "Types: deb-src\nURIs: http://archive.example/debian\nSuites: bookworm bookworm-updates\nComponents: main contrib\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n",
                "Types: deb-src\nURIs: http://security.example/debian-security\nSuites: bookworm-security\nComponents: main\n",
            ]
        );
    }

    #[test]
    fn one_line_entries_keep_their_keyring_and_skip_other_releases() {
        let text = "\
# deb http://commented.example/debian bookworm main
deb [arch=amd64 signed-by=/etc/keys/a.gpg] http://a.example/debian bookworm main # trailing
deb http://a.example/debian bookworm main
deb-src http://a.example/debian bookworm main
deb https://vendor.example/apt cloud-sdk-bookworm main
deb http://b.example/debian trixie main
";
        let sources = parse_one_line(text);
        assert_eq!(sources.len(), 5);
        let stanzas = source_stanzas(&sources, "bookworm");
        assert_eq!(
            stanzas,
            [
                "Types: deb-src\nURIs: http://a.example/debian\nSuites: bookworm\nComponents: main\nSigned-By: /etc/keys/a.gpg\n",
                "Types: deb-src\nURIs: http://a.example/debian\nSuites: bookworm\nComponents: main\n",
            ]
        );
    }

    #[test]
    fn other_releases_come_from_the_machines_archive_and_security_archive() {
        let stanzas = other_release_stanzas(
            &parse_deb822(DEB822),
            "bookworm",
            &["bullseye", "bullseye-security", "sid"],
        );
        assert_eq!(
            stanzas,
            [
                "Types: deb\nURIs: http://archive.example/debian\nSuites: bullseye\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n",
                "Types: deb\nURIs: http://security.example/debian-security\nSuites: bullseye-security\nComponents: main\n",
                "Types: deb\nURIs: http://archive.example/debian\nSuites: sid\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n",
            ]
        );
        let no_security = parse_deb822(DEB822.split("\n\n").next().unwrap());
        assert_eq!(
            other_release_stanzas(&no_security, "bookworm", &["bullseye-security"]),
            Vec::<String>::new()
        );
    }

    #[test]
    fn an_inline_key_keeps_its_continuation_lines() {
        let text = "Types: deb\nURIs: http://a.example/debian\nSuites: bookworm\nComponents: main\nSigned-By:\n -----BEGIN PGP PUBLIC KEY BLOCK-----\n .\n abc\n";
        let sources = parse_deb822(text);
        assert_eq!(
            sources[0].signed_by.as_deref(),
            Some("\n -----BEGIN PGP PUBLIC KEY BLOCK-----\n .\n abc")
        );
    }
}
