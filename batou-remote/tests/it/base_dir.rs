//! A relative or `~/` base directory: attributes rendered on the controller reach the host as
//! real paths below the login user's home.

use crate::harness::{Cluster, Project};

fn environment(base_dir: &str) -> String {
    format!(
        r#"
[environment]
base_dir = "{base_dir}"

[hosts.web1]
components = ["conf", "link"]

[components.conf]
type = "file"
path = "{{{{ workdir }}}}/app.conf"
content = "root = {{{{ environment.base_dir }}}}\nwork = {{{{ workdir }}}}\n"

[components.link]
type = "symlink"
path = "current"
target = "{{{{ environment.base_dir }}}}/work/conf/app.conf"
"#
    )
}

#[test]
fn attributes_see_the_real_base_directory_below_home() {
    let cluster = Cluster::start(&["web1"]);
    let home = cluster.host("web1").home.clone();
    for base_dir in ["srv", "~/srv"] {
        let p = Project::new();
        p.env("prod", &environment(base_dir));
        let out = cluster.run(p.root(), &["prod", "--json"]);
        assert_eq!(out.code, 0, "{base_dir}: {}\n{}", out.stderr, out.stdout);
        let srv = home.join("srv");
        let conf = srv.join("work/conf/app.conf");
        assert_eq!(
            std::fs::read_to_string(&conf).unwrap(),
            format!(
                "root = {}\nwork = {}\n",
                srv.display(),
                srv.join("work/conf").display()
            ),
            "{base_dir}"
        );
        assert_eq!(
            std::fs::read_link(srv.join("work/link/current")).unwrap(),
            conf,
            "{base_dir}"
        );
        assert!(
            !home.join("~").exists(),
            "{base_dir}: a directory called `~`"
        );
        assert!(!srv.join("work/conf/~").exists(), "{base_dir}");

        let again = cluster.run(p.root(), &["prod", "--json"]);
        assert_eq!(again.code, 0, "{}", again.stderr);
        assert_eq!(again.count("changed"), 0, "{base_dir}: {}", again.stdout);
    }
}
