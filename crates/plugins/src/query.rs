//! Editing a request target's query string.

/// `target` without the query arguments called `name`; the `?` goes too when nothing is left.
pub(crate) fn without_arg(target: &str, name: &str) -> String {
    let Some((path, query)) = target.split_once('?') else {
        return target.to_owned();
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| pair.split_once('=').map_or(*pair, |(k, _)| k) != name)
        .collect();
    if kept.iter().all(|p| p.is_empty()) {
        path.to_owned()
    } else {
        format!("{path}?{}", kept.join("&"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_named_argument_goes() {
        assert_eq!(without_arg("/a?apikey=k&b=1", "apikey"), "/a?b=1");
        assert_eq!(without_arg("/a?b=1&apikey=k", "apikey"), "/a?b=1");
        assert_eq!(without_arg("/a?apikey=k", "apikey"), "/a");
        assert_eq!(without_arg("/a?apikeys=k", "apikey"), "/a?apikeys=k");
        assert_eq!(without_arg("/a", "apikey"), "/a");
    }
}
