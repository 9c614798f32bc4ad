package signer

import (
	"sort"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/roadsign/roadsign/internal/meta"
)

// RoleStatus describes one role of a repository.
type RoleStatus struct {
	Repository string    `json:"repository"`
	Role       string    `json:"role"`
	Version    int64     `json:"version,omitempty"`
	Expires    time.Time `json:"expires,omitzero"`
	Threshold  int       `json:"threshold"`
	KeyIDs     []string  `json:"keyIds"`
	Online     bool      `json:"online"`
	Targets    int       `json:"targets,omitempty"`
}

// Status lists every role of both repositories as the workspace has them.
func (w *Workspace) Status() ([]RoleStatus, error) {
	var out []RoleStatus
	t, _, err := w.Targets()
	if err != nil && !w.MultiParty() {
		return nil, err
	}
	for _, repoName := range []string{Image, Director} {
		root, err := w.currentRootOrNil(repoName)
		if err != nil {
			return nil, err
		}
		if root == nil {
			continue // a multi-party workspace before its first publish
		}
		for _, role := range []string{metadata.ROOT, metadata.TARGETS, metadata.SNAPSHOT, metadata.TIMESTAMP} {
			ids, th := meta.RoleKeyIDs(&root.Signed, role)
			ids = append([]string(nil), ids...)
			sort.Strings(ids)
			rs := RoleStatus{Repository: repoName, Role: role, Threshold: th, KeyIDs: ids, Online: true}
			switch {
			case role == metadata.ROOT:
				rs.Version, rs.Expires, rs.Online = root.Signed.Version, root.Signed.Expires, false
			case role == metadata.TARGETS && repoName == Image && t != nil:
				rs.Version, rs.Expires, rs.Online, rs.Targets = t.Signed.Version, t.Signed.Expires, false, len(t.Signed.Targets)
			}
			out = append(out, rs)
		}
	}
	return out, nil
}
