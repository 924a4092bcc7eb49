//! Certificates for tests, made when the test runs (rcgen), plus one RSA key: ring cannot
//! generate RSA keys, so this one was made with `openssl genrsa 2048` for these tests only.

use rcgen::{date_time_ymd, BasicConstraints, CertificateParams, IsCa, KeyPair};

pub(crate) const RSA_KEY: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQCypbfapNZAuS/Z\n\
VkiglSa0F5E5t7hti3Y5YAxvDtrqD6cTG0Saq9TfsL40Qve5TapJu2MQYq2M5lhs\n\
G7VbUL/hXBb5FtqTkf6UYaz/v7uoHfo/dieDUsJn8Hr0IV37ftKhfy/fLmuvBaAS\n\
zIWPd9pQMngHDk0EZ26vv63QysQFmBIww0w8VKhI4kpkLlNJafro1zUxskDm65Cu\n\
fUQ7prPPR845yiHn2bEpDxec/dsVTTkv60TyWyLVjv2MZQSEdmN+Vjgz3rvjKiK2\n\
EsBC5hBrDY1qzqd4Gt3YCLI6p19mDYTNepytTelxOCZoylA8lG1rlb1qMf0qjWNT\n\
D5AfYbx1AgMBAAECggEALXP5j9FBzAzyDi+kYeshAlA+vHswmvqRVW7JKxaR/1yF\n\
K1jUPzA6BMIA2uYxBj4q9gCN53Tb6E4RMExqe7XTZEDcfXrhmQtbxSAG9rkvQ0qB\n\
SdVDn2eWnAB1IBk/QsZVTA7CvNugPVNGk5Hi54pciuwUWuM6GEVCxceUr1tvvWYz\n\
LmZgmQuoMToIuWFrtTLMWNIt6C3bOfdYUjRxDaC2j+Z3zogHcwC0DAFoQ/FOgMUu\n\
K1U16Dy5P1LhGWTr+yRss5lJgCnmHGSc9ffRBB6xCllpHGMK43Xgmu7YnXlxX5EU\n\
yZ0b1RzeskJ8H3pJSJ12PhRse/cW8JjNjdkoV+e+HwKBgQDjhu6/9iaZKJmJj5FZ\n\
GxdDd+D+xq2YM6VZHxKOmcSEp/ksuZrs3alVpXwP4LmBTgoCY6zkkx9O4V2hqVhF\n\
5AqmT10UHbMKZtvvgbdn1NKLKNyYL8MKr/hvMKLGBNfayZC30/5OIn4xG3QVcMZ/\n\
p05iXzi+dCxnzE/XUwdiVM4mUwKBgQDJAN850MX0tKxNK/AG3EsIJC6dfbqs5PJ2\n\
kzCIqbmG8GPIqHMY9YWOlud5WyLxoa8NjWgUH4ppUgT3sMD1IMd9WKQN5w/sb48o\n\
7qiZ035ZtbLbw3PWl7clXsuqNCLizuI7KJL702GDVdEcOwvqwtg2Jo10vdo+d+/v\n\
rP5AF0MpFwKBgFrWgzlml/Br8iimhfwSQc5w7QYq4iGy9N/I9Qqzv27K9UNy8rSA\n\
ptuHzykzqjxCoOJlUyCK0GQYu94QEysMKWhOpTWjydhsSoCrxEKTCGAAt1mXMAJz\n\
UPdrboEqa9dww/NwksY1JTaL5GOu+8D5VeUWaTw4e4YRXwrzni4W95r7AoGBAKyQ\n\
5BTV6W3aQ2cJxsuNC5nUvnSVwdO3x3YHjg52cIKqFXDrNc2C1IQDiH0GwmxinFBt\n\
S6KjJYigUwV3qWGKH9q8ZDRPYLtjV6wToYpXKc3JEeJc3jGpFSKvTPk2Q5EnftC9\n\
V9t9seU4owuyoduOJmPvG1jTufARtlu10J6jmhRHAoGAMKldDqh2vYUc45hVekpK\n\
Xd9OMB2VJLemj7Si+5RWAtqXDxWwvYIMokXontbmDY9XJXUM0TTeWEPiEyT6IJCt\n\
XQqaFb51oX/DFds9kvYWM1WDLJL1OBNQasiBHNDRuu03M6GjlsiQlNAg8+qQDZUH\n\
gwhXxEv+4HrMUX4z0oRUUVE=\n\
-----END PRIVATE KEY-----\n\
";

/// A certificate and its key, both PEM.
pub(crate) struct Pem {
    pub cert: String,
    pub key: String,
}

type Date = (i32, u8, u8);

const LONG_AGO: Date = (2020, 1, 1);
const FAR_AHEAD: Date = (2999, 1, 1);

fn params(names: &[&str], from: Date, to: Date) -> CertificateParams {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut params = CertificateParams::new(names).expect("valid names");
    params.not_before = date_time_ymd(from.0, from.1, from.2);
    params.not_after = date_time_ymd(to.0, to.1, to.2);
    params
}

fn issue(params: CertificateParams, key: KeyPair) -> Pem {
    let cert = params.self_signed(&key).expect("self-signed certificate");
    Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    }
}

/// A self-signed ECDSA P-256 certificate for `names`, valid now.
pub(crate) fn ecdsa(names: &[&str]) -> Pem {
    valid_between(names, LONG_AGO, FAR_AHEAD)
}

/// A self-signed RSA certificate for `names`, valid now.
pub(crate) fn rsa(names: &[&str]) -> Pem {
    let key = KeyPair::from_pem(RSA_KEY).expect("the RSA test key loads");
    issue(params(names, LONG_AGO, FAR_AHEAD), key)
}

/// A self-signed ECDSA certificate valid from `from` to `to` (midnight UTC).
pub(crate) fn valid_between(names: &[&str], from: Date, to: Date) -> Pem {
    issue(
        params(names, from, to),
        KeyPair::generate().expect("ECDSA key"),
    )
}

/// A CA certificate, and a leaf it signed whose `cert` is the chain leaf + CA.
pub(crate) fn ca_and_leaf(names: &[&str]) -> (Pem, Pem) {
    let ca_key = KeyPair::generate().expect("ECDSA key");
    let mut ca_params = params(&[], LONG_AGO, FAR_AHEAD);
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
    let leaf_key = KeyPair::generate().expect("ECDSA key");
    let leaf = params(names, LONG_AGO, FAR_AHEAD)
        .signed_by(&leaf_key, &ca, &ca_key)
        .expect("leaf certificate");
    (
        Pem {
            cert: ca.pem(),
            key: ca_key.serialize_pem(),
        },
        Pem {
            cert: format!("{}{}", leaf.pem(), ca.pem()),
            key: leaf_key.serialize_pem(),
        },
    )
}
