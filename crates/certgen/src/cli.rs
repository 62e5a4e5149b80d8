//! `certgen`'s command line, and what each command does.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::{Authority, Error, KeyType, LeafSpec, Result, RootSpec, Usage, crl, dev, files, inspect, verify};

/// `certgen COMMAND`.
#[derive(Parser)]
#[command(
    name = "certgen",
    version,
    about = "Issue and inspect the Micronets WebSocket proxy's certificates"
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Subcommand)]
pub enum Command {
    /// Issue a root CA: <base>.cert.pem and <base>.key.pem.
    Root(Common),
    /// Issue a leaf signed by a CA: <base>.cert.pem, <base>.key.pem and <base>.pkeycert.pem.
    Leaf {
        /// Output path, subject, validity, key type.
        #[command(flatten)]
        common: Common,
        /// The CA certificate.
        #[arg(long)]
        ca_certfile: PathBuf,
        /// The CA private key (PKCS#8, or the original scripts' SEC1 form).
        #[arg(long)]
        ca_keyfile: PathBuf,
        /// Extended key usage: client, server or both.
        #[arg(long, default_value = "both")]
        usage: Usage,
        /// A DNS subjectAltName (repeatable).
        #[arg(long = "san-dns")]
        san_dns: Vec<String>,
        /// An IP subjectAltName (repeatable).
        #[arg(long = "san-ip")]
        san_ip: Vec<String>,
    },
    /// Describe every certificate in a PEM file.
    Inspect {
        /// The PEM file.
        file: PathBuf,
        /// One JSON object per certificate, one per line.
        #[arg(long)]
        json: bool,
    },
    /// Verify a leaf (and any intermediates after it) against a CA bundle; exit 0 or 1.
    Verify {
        /// The CA certificate(s).
        #[arg(long)]
        ca: PathBuf,
        /// The leaf certificate or pkeycert.
        leaf: PathBuf,
        /// Require this usage (client or server; default: either).
        #[arg(long)]
        usage: Option<Usage>,
    },
    /// Add a certificate to the CA's revocation list (creating the CRL file when missing).
    #[command(group = clap::ArgGroup::new("which").required(true))]
    Revoke {
        /// The CA certificate.
        #[arg(long)]
        ca_certfile: PathBuf,
        /// The CA private key.
        #[arg(long)]
        ca_keyfile: PathBuf,
        /// The serial to revoke, in hex as `certgen inspect` prints it.
        #[arg(long, group = "which")]
        serial: Option<String>,
        /// The certificate (or pkeycert) to revoke.
        #[arg(long, group = "which")]
        cert: Option<PathBuf>,
        /// The CRL file (PEM), e.g. certs/micronets-ws-root.crl.pem.
        #[arg(long)]
        crl: PathBuf,
        /// Days until the CRL's nextUpdate.
        #[arg(long, default_value_t = 30)]
        next_update_days: u32,
    },
    /// Create or refresh the whole development PKI.
    Dev {
        /// Where to put it.
        #[arg(long, default_value = "certs/dev")]
        dir: PathBuf,
    },
}

/// What `root` and `leaf` share.
#[derive(Args)]
pub struct Common {
    /// Output path without suffix, e.g. certs/micronets-ws-root.
    #[arg(long)]
    cert_basename: PathBuf,
    /// Subject organization (O).
    #[arg(long)]
    subject_org_name: String,
    /// Subject CN [default: root: the organization; leaf: the basename's file name].
    #[arg(long)]
    common_name: Option<String>,
    /// Validity in days.
    #[arg(long, default_value_t = 500)]
    expiration_in_days: u32,
    /// Key algorithm: p256, p384, ed25519, rsa2048 or rsa3072.
    #[arg(long, default_value = "p256")]
    key_type: KeyType,
    /// Replace existing output files.
    #[arg(long, alias = "force-overwrite")]
    force: bool,
}

/// What a command printed: its report, and a warning for standard error.
#[derive(Debug, Default)]
pub struct Printed {
    /// The command's report, for standard output.
    pub out: String,
    /// Something the user should know, for standard error.
    pub warning: Option<String>,
}

impl Printed {
    fn out(out: String) -> Self {
        Printed { out, warning: None }
    }
}

/// Runs one command.
///
/// # Errors
/// [`Error::Invalid`] for arguments that cannot be used (exit 64), any other [`Error`] for a
/// failure (exit 1).
pub fn run(command: Command) -> Result<Printed> {
    let (base, issued, leaf, force) = match command {
        Command::Root(c) => {
            let (common_name, days, key_type) = (c.common_name, c.expiration_in_days, c.key_type);
            let spec = RootSpec { org: c.subject_org_name, common_name, days, key_type };
            (c.cert_basename, crate::issue_root(&spec)?, false, c.force)
        }
        Command::Leaf { common: c, ca_certfile, ca_keyfile, usage, san_dns, san_ip } => {
            let authority = Authority::load(&ca_certfile, &ca_keyfile)?;
            let default_cn = c.cert_basename.file_name().map(|n| n.to_string_lossy().into_owned());
            let spec = LeafSpec {
                org: c.subject_org_name,
                common_name: c.common_name.or(default_cn).unwrap_or_default(),
                days: c.expiration_in_days,
                key_type: c.key_type,
                usage,
                dns_names: san_dns,
                ip_addresses: san_ip,
            };
            (c.cert_basename, authority.issue_leaf(&spec)?, true, c.force)
        }
        Command::Inspect { file, json } => {
            let infos = inspect::CertInfo::from_file(&file)?;
            let text: Vec<String> = match json {
                true => infos.iter().map(|i| serde_json::to_string(i).unwrap_or_default()).collect(),
                false => infos.iter().map(ToString::to_string).collect(),
            };
            return Ok(Printed::out(text.join(if json { "\n" } else { "\n\n" })));
        }
        Command::Verify { ca, leaf, usage } => {
            let purposes = verify::verify(&ca, &leaf, usage)?.purposes.join(" and ");
            return Ok(Printed::out(format!("{}: OK (valid for {purposes} authentication)", leaf.display())));
        }
        Command::Revoke { ca_certfile, ca_keyfile, serial, cert, crl, next_update_days } => {
            let serial = match (serial, cert) {
                (Some(text), _) => crl::parse_serial(&text)?,
                (None, Some(path)) => crl::serial_of(&path)?,
                (None, None) => return Err(Error::Invalid("give --serial or --cert".into())),
            };
            let authority = Authority::load(&ca_certfile, &ca_keyfile)?;
            let done = crl::revoke(&authority, &crl, &serial, next_update_days)?;
            let what = if done.already { "was already revoked" } else { "revoked" };
            return Ok(Printed::out(format!(
                "{} {what}; {} lists {} serial(s), CRL number {}",
                done.serial,
                crl.display(),
                done.count,
                done.crl_number
            )));
        }
        Command::Dev { dir } => {
            let report = dev::ensure(&dev::DevPki::new(&dir))?;
            let (created, kept) = (report.created.join(", "), report.kept.join(", "));
            return Ok(Printed::out(format!(
                "dev PKI in {}: created [{created}], kept [{kept}]",
                dir.display()
            )));
        }
    };
    let warning = issued.capped_to_ca.then(|| "warning: notAfter cut to the CA's own notAfter".to_owned());
    let written = files::write_issued(&base, &issued, leaf, force)?;
    let out = written.iter().map(|path| format!("wrote {}", path.display())).collect::<Vec<_>>().join("\n");
    Ok(Printed { out, warning })
}
