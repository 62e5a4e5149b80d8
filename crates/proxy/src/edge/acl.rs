//! Authorization: which certificate may join which room (`[[acl.rules]]`, docs/security.md).
//!
//! Rules are tried in order and the first that matches both the room and the certificate
//! decides. Once any rule exists, a connection no rule matches is refused (default deny);
//! with no rules at all every valid certificate may join every room, as in the original, and
//! the proxy says so at start-up. A room pattern is an exact id, a glob (`*` within one
//! `/`-separated segment, `**` across segments), or a template filled from the certificate
//! (`gw/{cn}`: each gateway into its own room only). An allowing rule may also name the
//! `peerClass` its HELLO must carry. The decision is made before the upgrade (HTTP 403), and
//! `ws-proxy check-access` gives the same decision in words ([`Acl::judge`]).

use crate::config::AclRule;
use crate::identity::PeerIdentity;
use crate::rooms::id::RoomId;

/// A rule of `[[acl.rules]]` that cannot be used, and which one (counted from 1).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("rule {number}: {problem}")]
pub struct AclError {
    /// The rule's place in the file, from 1.
    pub number: usize,
    /// What is wrong with it.
    pub problem: RuleProblem,
}

/// What is wrong with one rule.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RuleProblem {
    /// A certificate matcher given as an empty string.
    #[error("an empty {0} never matches")]
    EmptyMatcher(&'static str),
    /// A `fingerprint` that is not a SHA-256 in hex.
    #[error("fingerprint {0:?} is not 64 hex digits (SHA-256)")]
    Fingerprint(String),
    /// `peer_class` on a denying rule.
    #[error("peer_class only limits an allowing rule")]
    PeerClassOnDeny,
    /// `room = ""`.
    #[error("room pattern is empty")]
    EmptyPattern,
    /// A `{` without its `}`.
    #[error("room {0:?}: unclosed '{{'")]
    Unclosed(String),
    /// A template field other than `cn`, `o`, `ou`.
    #[error("room {room:?}: unknown template field {{{field}}} (cn, o or ou)")]
    UnknownField {
        /// The pattern.
        room: String,
        /// The field named.
        field: String,
    },
    /// A `}` without its `{`.
    #[error("room {0:?}: '}}' without '{{'")]
    StrayBrace(String),
    /// Characters no room id holds.
    #[error("room {0:?}: a room id holds only letters, digits, . _ ~ : @ - and single '/'")]
    Characters(String),
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
    ///
    /// # Errors
    /// The first rule that cannot be used, and why.
    pub fn new(specs: &[AclRule]) -> Result<Self, AclError> {
        let rules = specs
            .iter()
            .enumerate()
            .map(|(i, spec)| Rule::new(spec).map_err(|problem| AclError { number: i + 1, problem }))
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
    #[must_use]
    pub fn judge(&self, identity: &PeerIdentity, room: &RoomId) -> (Decision, String) {
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

impl Rule {
    fn new(spec: &AclRule) -> Result<Self, RuleProblem> {
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
                _ if value.is_empty() => Err(RuleProblem::EmptyMatcher(field_name(field))),
                Field::Fingerprint => normalize_fingerprint(value).map(|v| (field, v)),
                _ => Ok((field, value.clone())),
            })
            .collect::<Result<_, _>>()?;
        if spec.peer_class.is_some() && !spec.allow {
            return Err(RuleProblem::PeerClassOnDeny);
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
fn normalize_fingerprint(text: &str) -> Result<String, RuleProblem> {
    let hex: String = text.chars().filter(|c| *c != ':').collect::<String>().to_ascii_uppercase();
    if hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit()) {
        Ok(hex)
    } else {
        Err(RuleProblem::Fingerprint(text.to_owned()))
    }
}

fn parse_pattern(text: &str) -> Result<Vec<Token>, RuleProblem> {
    if text.is_empty() {
        return Err(RuleProblem::EmptyPattern);
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
                after.split_once('}').ok_or_else(|| RuleProblem::Unclosed(text.to_owned()))?;
            let field = match name {
                "cn" => Field::Cn,
                "o" => Field::O,
                "ou" => Field::Ou,
                _ => {
                    return Err(RuleProblem::UnknownField { room: text.to_owned(), field: name.to_owned() });
                }
            };
            tokens.push(Token::Field(field));
            rest = after;
        } else {
            let end = rest.find(['*', '{']).unwrap_or(rest.len());
            let (literal, after) = rest.split_at(end);
            if literal.contains('}') {
                return Err(RuleProblem::StrayBrace(text.to_owned()));
            }
            if !literal.split('/').all(|part| part.is_empty() || is_segment(part)) || literal.contains("//") {
                return Err(RuleProblem::Characters(text.to_owned()));
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
    use crate::config::AclRule as RuleSpec;
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
            let err = Acl::new(&[rule("ok", true), spec]).unwrap_err().to_string();
            assert!(err.starts_with("rule 2: ") && err.contains(expected), "{err}");
        }
    }
}
