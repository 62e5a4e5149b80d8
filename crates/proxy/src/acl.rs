//! Authorization: which certificate may join which room (`[[acl.rules]]`, design.md section 6).
//!
//! Rules are tried in order and the first that matches both the room and the certificate
//! decides. Once any rule exists, a connection no rule matches is refused (default deny);
//! with no rules at all every valid certificate may join every room, as in the original, and
//! the proxy says so at start-up. A room pattern is an exact id, a glob (`*` within one
//! `/`-separated segment, `**` across segments), or a template filled from the certificate
//! (`gw/{cn}`: each gateway into its own room only). An allowing rule may also name the
//! `peerClass` its HELLO must carry. The decision is made before the upgrade (HTTP 403), and
//! [`check_access`] gives the same decision in words, for `ws-proxy check-access`.

use std::path::Path;

use serde::Deserialize;

use crate::identity::PeerIdentity;
use crate::room::RoomId;
use crate::{Error, FileConfig, Overrides};

/// One rule as written in the configuration file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RuleSpec {
    room: String,
    allow: bool,
    cn: Option<String>,
    o: Option<String>,
    ou: Option<String>,
    san_dns: Option<String>,
    san_uri: Option<String>,
    fingerprint: Option<String>,
    peer_class: Option<String>,
}

/// The validated rules.
#[derive(Clone, Debug, Default)]
pub struct Acl {
    rules: Vec<Rule>,
}

#[derive(Clone, Debug)]
struct Rule {
    /// The room pattern as written, for explanations.
    text: String,
    pattern: Vec<Token>,
    allow: bool,
    fields: Vec<(Field, String)>,
    peer_class: Option<String>,
}

/// A piece of a room pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    Literal(String),
    /// `*`: any run of characters but `/`.
    Star,
    /// `**`: any run of characters.
    StarStar,
    /// `{cn}`, `{o}`, `{ou}`: the certificate's value, literally.
    Field(Field),
}

/// A certificate field a rule can test or a template can use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    Cn,
    O,
    Ou,
    SanDns,
    SanUri,
    Fingerprint,
}

impl Field {
    /// The certificate's values for this field (SANs may be several).
    fn values(self, identity: &PeerIdentity) -> Vec<String> {
        let sans = |prefix: &str| {
            identity.sans.iter().filter_map(|s| s.strip_prefix(prefix)).map(str::to_owned).collect()
        };
        match self {
            Field::Cn => identity.common_name.iter().cloned().collect(),
            Field::O => identity.organization.iter().cloned().collect(),
            Field::Ou => identity.org_unit.iter().cloned().collect(),
            Field::SanDns => sans("DNS:"),
            Field::SanUri => sans("URI:"),
            Field::Fingerprint => vec![identity.fingerprint.to_string()],
        }
    }
}

/// What the rules say about a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// It may join; its HELLO must carry this `peerClass`, when one is named.
    Allow {
        /// The `peerClass` the deciding rule requires.
        peer_class: Option<String>,
    },
    /// It may not join, for this reason (which names the rule, or the default).
    Deny(String),
}

impl Acl {
    /// Validates the rules of `[[acl.rules]]`.
    pub(crate) fn new(specs: &[RuleSpec]) -> Result<Self, String> {
        let rules = specs
            .iter()
            .enumerate()
            .map(|(i, spec)| Rule::new(spec).map_err(|e| format!("rule {}: {e}", i + 1)))
            .collect::<Result<_, _>>()?;
        Ok(Acl { rules })
    }

    /// Whether any rule exists (without rules, everyone may join everywhere).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// How many rules there are.
    #[must_use]
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// The decision for `identity` joining `room`.
    #[must_use]
    pub fn decide(&self, identity: &PeerIdentity, room: &RoomId) -> Decision {
        self.judge(identity, room).0
    }

    /// The decision, and in words which rule made it.
    fn judge(&self, identity: &PeerIdentity, room: &RoomId) -> (Decision, String) {
        if self.rules.is_empty() {
            let why = "no ACL rules: every valid certificate may join every room".to_owned();
            return (Decision::Allow { peer_class: None }, why);
        }
        for (i, rule) in self.rules.iter().enumerate() {
            if !rule.matches(identity, room.as_str()) {
                continue;
            }
            let verdict = if rule.allow { "allows" } else { "denies" };
            let why = format!("rule {} (room = {:?}) matches and {verdict}", i + 1, rule.text);
            return match rule.allow {
                true => (Decision::Allow { peer_class: rule.peer_class.clone() }, why),
                false => (Decision::Deny(why.clone()), why),
            };
        }
        let why = format!("no rule matches room {room} for this certificate: denied by default");
        (Decision::Deny(why.clone()), why)
    }
}

/// `ws-proxy check-access`: what the rules of the configuration file `config` decide for the
/// first certificate in `cert` joining `room`, and why, as lines for a person; and whether it
/// is allowed.
///
/// # Errors
/// [`Error::ConfigFile`] or [`Error::Config`] for the configuration, [`Error::Tls`] for the
/// certificate file, [`Error::Config`] (key `room`) for an invalid room id.
pub fn check_access(config: &Path, cert: &Path, room: &str) -> crate::Result<(bool, String)> {
    let config = FileConfig::load(config)?.into_config(&Overrides::default())?;
    let certs = crate::tls::read_certs(cert)?;
    let der =
        certs.first().ok_or_else(|| Error::Tls { path: cert.to_owned(), reason: "no certificate".into() })?;
    let identity =
        PeerIdentity::from_der(der).map_err(|reason| Error::Tls { path: cert.to_owned(), reason })?;
    let room = RoomId::parse(room).map_err(|e| Error::Config { key: "room".into(), reason: e.into() })?;
    let (decision, why) = config.acl.judge(&identity, &room);
    let verdict = match &decision {
        Decision::Allow { peer_class: Some(class) } => {
            format!("allowed, if its CONN:HELLO carries peerClass {class:?}")
        }
        Decision::Allow { peer_class: None } => "allowed".to_owned(),
        Decision::Deny(_) => "denied: the upgrade is refused with HTTP 403".to_owned(),
    };
    let report = format!("certificate: {}\nroom: {room}\n{why}\n{verdict}\n", identity.subject);
    Ok((matches!(decision, Decision::Allow { .. }), report))
}

impl Rule {
    fn new(spec: &RuleSpec) -> Result<Self, String> {
        let pattern = parse_pattern(&spec.room)?;
        let fields = [
            (Field::Cn, &spec.cn),
            (Field::O, &spec.o),
            (Field::Ou, &spec.ou),
            (Field::SanDns, &spec.san_dns),
            (Field::SanUri, &spec.san_uri),
            (Field::Fingerprint, &spec.fingerprint),
        ];
        let fields = fields
            .into_iter()
            .filter_map(|(field, value)| value.as_ref().map(|v| (field, v)))
            .map(|(field, value)| match field {
                _ if value.is_empty() => Err(format!("an empty {} never matches", field_name(field))),
                Field::Fingerprint => normalize_fingerprint(value).map(|v| (field, v)),
                _ => Ok((field, value.clone())),
            })
            .collect::<Result<_, _>>()?;
        if spec.peer_class.is_some() && !spec.allow {
            return Err("peer_class only limits an allowing rule".into());
        }
        Ok(Rule {
            text: spec.room.clone(),
            pattern,
            allow: spec.allow,
            fields,
            peer_class: spec.peer_class.clone(),
        })
    }

    fn matches(&self, identity: &PeerIdentity, room: &str) -> bool {
        let fields_match = self
            .fields
            .iter()
            .all(|(field, wanted)| field.values(identity).iter().any(|value| value == wanted));
        fields_match && glob(&self.pattern, room, identity)
    }
}

fn field_name(field: Field) -> &'static str {
    match field {
        Field::Cn => "cn",
        Field::O => "o",
        Field::Ou => "ou",
        Field::SanDns => "san_dns",
        Field::SanUri => "san_uri",
        Field::Fingerprint => "fingerprint",
    }
}

/// `AB:CD:...` or `abcd...` -> 64 uppercase hex digits.
fn normalize_fingerprint(text: &str) -> Result<String, String> {
    let hex: String = text.chars().filter(|c| *c != ':').collect::<String>().to_ascii_uppercase();
    if hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit()) {
        Ok(hex)
    } else {
        Err(format!("fingerprint {text:?} is not 64 hex digits (SHA-256)"))
    }
}

fn parse_pattern(text: &str) -> Result<Vec<Token>, String> {
    if text.is_empty() {
        return Err("room pattern is empty".into());
    }
    let mut tokens = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix("**") {
            tokens.push(Token::StarStar);
            rest = after;
        } else if let Some(after) = rest.strip_prefix('*') {
            tokens.push(Token::Star);
            rest = after;
        } else if let Some(after) = rest.strip_prefix('{') {
            let (name, after) =
                after.split_once('}').ok_or_else(|| format!("room {text:?}: unclosed '{{'"))?;
            let field = match name {
                "cn" => Field::Cn,
                "o" => Field::O,
                "ou" => Field::Ou,
                _ => return Err(format!("room {text:?}: unknown template field {{{name}}} (cn, o or ou)")),
            };
            tokens.push(Token::Field(field));
            rest = after;
        } else {
            let end = rest.find(['*', '{']).unwrap_or(rest.len());
            let (literal, after) = rest.split_at(end);
            if literal.contains('}') {
                return Err(format!("room {text:?}: '}}' without '{{'"));
            }
            if !literal.split('/').all(|part| part.is_empty() || is_segment(part)) || literal.contains("//") {
                return Err(format!(
                    "room {text:?}: a room id holds only letters, digits, . _ ~ : @ - and single '/'"
                ));
            }
            tokens.push(Token::Literal(literal.to_owned()));
            rest = after;
        }
    }
    Ok(tokens)
}

/// Whether `text` is one room-id segment: letters, digits and `. _ ~ : @ -`, not `.` or `..`.
fn is_segment(text: &str) -> bool {
    let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b':' | b'@' | b'-');
    !text.is_empty() && text != "." && text != ".." && text.bytes().all(allowed)
}

/// Whether `room` matches the pattern, template fields taken literally from `identity`.
fn glob(pattern: &[Token], room: &str, identity: &PeerIdentity) -> bool {
    let Some((first, rest)) = pattern.split_first() else { return room.is_empty() };
    match first {
        Token::Literal(text) => {
            room.strip_prefix(text.as_str()).is_some_and(|after| glob(rest, after, identity))
        }
        // A value that is not one plain segment (a `/`, a space, nothing) never matches, so a
        // certificate cannot reach across segments into another's room.
        Token::Field(field) => {
            field.values(identity).iter().filter(|v| is_segment(v)).any(|value| {
                room.strip_prefix(value.as_str()).is_some_and(|after| glob(rest, after, identity))
            })
        }
        Token::Star | Token::StarStar => {
            let stop = if *first == Token::Star { room.find('/').unwrap_or(room.len()) } else { room.len() };
            (0..=stop).filter(|&i| room.is_char_boundary(i)).any(|i| glob(rest, &room[i..], identity))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Fingerprint;

    fn identity(cn: &str, o: &str, sans: &[&str]) -> PeerIdentity {
        PeerIdentity {
            subject: format!("CN={cn}, O={o}"),
            common_name: Some(cn.to_owned()),
            organization: Some(o.to_owned()),
            org_unit: None,
            sans: sans.iter().map(|s| (*s).to_owned()).collect(),
            serial: "01".into(),
            fingerprint: Fingerprint([0xAB; 32]),
            not_after: 0,
        }
    }

    fn rule(room: &str, allow: bool) -> RuleSpec {
        RuleSpec { room: room.into(), allow, ..RuleSpec::default() }
    }

    fn room(id: &str) -> RoomId {
        RoomId::parse(id).unwrap()
    }

    #[test]
    fn the_micronets_layout_manager_anywhere_under_gw_each_gateway_in_its_own_room() {
        let acl = Acl::new(&[
            RuleSpec { cn: Some("manager".into()), ..rule("gw/*", true) },
            RuleSpec { peer_class: Some("micronets-gw-service".into()), ..rule("gw/{cn}", true) },
        ])
        .unwrap();
        let manager = identity("manager", "Micronets", &[]);
        let gateway = identity("gateway-7", "Micronets", &[]);
        assert_eq!(acl.decide(&manager, &room("gw/gateway-7")), Decision::Allow { peer_class: None });
        assert!(matches!(acl.decide(&manager, &room("gw/a/b")), Decision::Deny(_)), "* stays in its segment");
        assert_eq!(
            acl.decide(&gateway, &room("gw/gateway-7")),
            Decision::Allow { peer_class: Some("micronets-gw-service".into()) }
        );
        let Decision::Deny(why) = acl.decide(&gateway, &room("gw/gateway-8")) else { panic!() };
        assert!(why.contains("denied by default"), "{why}");
        assert!(acl.judge(&manager, &room("gw/x")).1.contains("rule 1"));
        assert!(acl.judge(&gateway, &room("gw/gateway-7")).1.contains("rule 2"));
    }

    #[test]
    fn first_match_wins_and_no_rules_allow_everything() {
        let anyone = identity("x", "y", &[]);
        assert_eq!(Acl::default().decide(&anyone, &room("a")), Decision::Allow { peer_class: None });
        let acl = Acl::new(&[rule("lab/**", false), rule("**", true)]).unwrap();
        assert!(
            matches!(acl.decide(&anyone, &room("lab/a/b")), Decision::Deny(ref w) if w.contains("rule 1"))
        );
        assert_eq!(acl.decide(&anyone, &room("prod/a/b")), Decision::Allow { peer_class: None });
    }

    #[test]
    fn certificate_fields_and_sans_and_fingerprints_match() {
        let cert = identity("dev", "Org", &["DNS:gw.example", "URI:urn:gw:1"]);
        let fingerprint = "ab:".repeat(31) + "ab";
        for spec in [
            RuleSpec { o: Some("Org".into()), ..rule("r", true) },
            RuleSpec { san_dns: Some("gw.example".into()), ..rule("r", true) },
            RuleSpec { san_uri: Some("urn:gw:1".into()), ..rule("r", true) },
            RuleSpec { fingerprint: Some(fingerprint), ..rule("r", true) },
        ] {
            assert_eq!(
                Acl::new(&[spec]).unwrap().decide(&cert, &room("r")),
                Decision::Allow { peer_class: None }
            );
        }
        let wrong = Acl::new(&[RuleSpec { ou: Some("Ops".into()), ..rule("r", true) }]).unwrap();
        assert!(matches!(wrong.decide(&cert, &room("r")), Decision::Deny(_)), "a missing OU does not match");
    }

    #[test]
    fn template_values_are_literal_single_segments() {
        let acl = Acl::new(&[rule("gw/{cn}", true)]).unwrap();
        let sneaky = identity("*", "o", &[]);
        assert!(matches!(acl.decide(&sneaky, &room("gw/anything")), Decision::Deny(_)));
        let reaching = identity("a/b", "o", &[]);
        assert!(matches!(acl.decide(&reaching, &room("gw/a/b")), Decision::Deny(_)), "no crossing segments");
    }

    #[test]
    fn bad_rules_are_refused_with_their_number() {
        for (spec, expected) in [
            (rule("", true), "empty"),
            (rule("gw/{serial}", true), "unknown template field"),
            (rule("gw/{cn", true), "unclosed"),
            (rule("gw/}", true), "without"),
            (RuleSpec { fingerprint: Some("12".into()), ..rule("r", true) }, "64 hex digits"),
            (RuleSpec { peer_class: Some("x".into()), ..rule("r", false) }, "allowing rule"),
            (rule("gw//x", true), "single '/'"),
            (rule("gw/a b", true), "letters, digits"),
            (RuleSpec { cn: Some(String::new()), ..rule("r", true) }, "an empty cn"),
        ] {
            let err = Acl::new(&[rule("ok", true), spec]).unwrap_err();
            assert!(err.starts_with("rule 2: ") && err.contains(expected), "{err}");
        }
    }
}
