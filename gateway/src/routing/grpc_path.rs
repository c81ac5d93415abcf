//! The gRPC `:path`: `/package.Service/Method`.

/// A parsed gRPC call target, borrowed from the request path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrpcPath<'a> {
    pub service: &'a str,
    pub method: &'a str,
}

/// Splits a request path into service and method, refusing anything that is not exactly
/// `/service/method` with non-empty, printable parts (no query, no extra segments).
pub fn parse_grpc_path(path: &str) -> Option<GrpcPath<'_>> {
    let rest = path.strip_prefix('/')?;
    let (service, method) = rest.split_once('/')?;
    let valid = |s: &str| {
        !s.is_empty()
            && s.len() <= 256
            && s.bytes()
                .all(|b| b.is_ascii_graphic() && b != b'/' && b != b'?' && b != b'#')
    };
    (valid(service) && valid(method)).then_some(GrpcPath { service, method })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_service_and_method() {
        assert_eq!(
            parse_grpc_path("/bench.Echo/Unary"),
            Some(GrpcPath {
                service: "bench.Echo",
                method: "Unary"
            })
        );
    }

    #[test]
    fn refuses_malformed_paths() {
        for bad in [
            "",
            "/",
            "bench.Echo/Unary",
            "/bench.Echo",
            "/bench.Echo/",
            "//Unary",
            "/a/b/c",
            "/a/b?x=1",
            "/a b/c",
        ] {
            assert_eq!(parse_grpc_path(bad), None, "{bad:?}");
        }
    }
}
