package config

import (
	"os"
	"reflect"
	"strings"
	"testing"
)

// TestExampleIsTheDefault keeps lacre.toml.example honest: it must parse,
// and every value it shows must be the built-in default.
func TestExampleIsTheDefault(t *testing.T) {
	c, err := Load("../lacre.toml.example")
	if err != nil {
		t.Fatal(err)
	}
	d := Default()
	d.Path = c.Path
	// The example writes empty tables and lists; the defaults leave them nil.
	if len(c.Static.NeverEncrypt) == 0 && len(c.Static.Addresses) == 0 && len(c.Static.Domains) == 0 {
		c.Static = d.Static
	}
	if !reflect.DeepEqual(c, d) {
		t.Errorf("lacre.toml.example differs from Default():\n file    %+v\n default %+v", c, d)
	}
}

// TestExampleListsEveryOption fails when an option is added to Config
// without documenting it in lacre.toml.example.
func TestExampleListsEveryOption(t *testing.T) {
	src, err := os.ReadFile("../lacre.toml.example")
	if err != nil {
		t.Fatal(err)
	}
	text := string(src)
	ct := reflect.TypeFor[Config]()
	for i := range ct.NumField() {
		sec := ct.Field(i)
		table := sec.Tag.Get("toml")
		if table == "" || table == "-" {
			continue
		}
		if !strings.Contains(text, "["+table+"]") {
			t.Errorf("lacre.toml.example has no [%s] table", table)
		}
		for j := range sec.Type.NumField() {
			key := sec.Type.Field(j).Tag.Get("toml")
			if key == "" || key == "-" {
				continue
			}
			if sec.Type.Field(j).Type.Kind() == reflect.Map {
				if !strings.Contains(text, "["+table+"."+key+"]") {
					t.Errorf("lacre.toml.example has no [%s.%s] table", table, key)
				}
			} else if !strings.Contains(text, "\n"+key+" = ") {
				t.Errorf("lacre.toml.example does not show %s.%s", table, key)
			}
		}
	}
}
